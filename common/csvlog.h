/*
 * common/csvlog.h: the CSV logs every trainer writes into --out (docs/formats.md, "The logs").
 *
 * A fresh run truncates a log and writes its header row. A resumed run keeps the
 * rows up to the step it resumes from and appends after them: a crash after the
 * last checkpoint may have logged steps that are now run again, and they must
 * not appear twice. (The first field of every row is the step.)
 */
#ifndef RESCALE_CSVLOG_H
#define RESCALE_CSVLOG_H

#include "utils.h"

// resume_step < 0: a fresh run
static FILE *csv_open(const char *dir, const char *name, const char *header, int resume_step) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (resume_step >= 0 && file_size(path) > 0) {
        FILE *in = fopen_check(path, "r");
        char *kept = NULL;
        size_t kept_len = 0;
        FILE *mem = open_memstream(&kept, &kept_len);
        char line[1024];
        int first = 1;
        while (fgets(line, sizeof(line), in)) {
            if (first || atoi(line) <= resume_step) fputs(line, mem);
            first = 0;
        }
        fclose(in);
        fclose(mem);
        FILE *out = fopen_check(path, "w");
        fwrite_check(kept, 1, kept_len, out, path);
        free(kept);
        return out;
    }
    FILE *f = fopen_check(path, "w");
    fprintf(f, "%s\n", header);
    return f;
}

#endif // RESCALE_CSVLOG_H
