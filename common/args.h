/*
 * common/args.h: one table describes every command-line flag of a program: its
 * name, type, default, allowed range and help line. Parsing, range checks and
 * --help all read that one table, so a default can never drift from its help.
 *
 * Errors (unknown flag, missing value, not a number, out of range, not one of
 * the choices) print one line naming the flag and exit with status 2 before any
 * work starts.
 */
#ifndef RESCALE_ARGS_H
#define RESCALE_ARGS_H

#include <float.h>
#include <limits.h>

#include "utils.h"

typedef enum { FLAG_INT, FLAG_FLOAT, FLAG_STRING, FLAG_CHOICE } FlagKind;

typedef struct {
    const char *name;    // without the leading "--"
    FlagKind kind;
    void *dst;           // int* (FLAG_INT), double* (FLAG_FLOAT), const char** (FLAG_STRING, FLAG_CHOICE)
    const char *def;     // default, as it would be typed; NULL for "unset" strings
    double lo, hi;       // inclusive range for numbers
    const char *choices; // FLAG_CHOICE: "a|b|c"
    const char *help;
    int given;           // set by flags_parse when the flag was on the command line
} Flag;

#define usage_error(...) die_status(EXIT_USAGE, __VA_ARGS__)

static int choice_ok(const char *choices, const char *v) {
    size_t n = strlen(v);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

static void flag_set(Flag *f, const char *v) {
    char *end = NULL;
    switch (f->kind) {
    case FLAG_INT: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (*v == '\0' || *end != '\0' || errno != 0) usage_error("--%s: '%s' is not an integer", f->name, v);
        if (x < f->lo || x > f->hi) usage_error("--%s must be in [%.0f, %.0f], got %ld", f->name, f->lo, f->hi, x);
        *(int *)f->dst = (int)x;
        break;
    }
    case FLAG_FLOAT: {
        errno = 0;
        double x = strtod(v, &end);
        if (*v == '\0' || *end != '\0' || errno != 0 || !isfinite(x)) {
            usage_error("--%s: '%s' is not a number", f->name, v);
        }
        if (x < f->lo || x > f->hi) usage_error("--%s must be in [%g, %g], got %g", f->name, f->lo, f->hi, x);
        *(double *)f->dst = x;
        break;
    }
    case FLAG_STRING:
        *(const char **)f->dst = v;
        break;
    case FLAG_CHOICE:
        if (!choice_ok(f->choices, v)) usage_error("--%s must be one of %s, got '%s'", f->name, f->choices, v);
        *(const char **)f->dst = v;
        break;
    }
}

static void flags_print_help(const Flag *flags, int n, const char *usage) {
    printf("%s\n\nflags (default in brackets):\n", usage);
    for (int i = 0; i < n; i++) {
        const Flag *f = &flags[i];
        char range[96] = "";
        if (f->kind == FLAG_INT || f->kind == FLAG_FLOAT) {
            snprintf(range, sizeof(range), " (%g..%g)", f->lo, f->hi);
        } else if (f->kind == FLAG_CHOICE) {
            snprintf(range, sizeof(range), " (%s)", f->choices);
        }
        printf("  --%-18s %s [%s]%s\n", f->name, f->help, f->def ? f->def : "", range);
    }
}

// Set every default, then apply argv[first..argc-1] as "--name value" pairs.
static void flags_parse(Flag *flags, int n, int argc, char **argv, int first, const char *usage) {
    for (int i = 0; i < n; i++) {
        flags[i].given = 0;
        if (flags[i].def) {
            flag_set(&flags[i], flags[i].def);
        } else if (flags[i].kind == FLAG_STRING) {
            *(const char **)flags[i].dst = NULL;
        }
    }
    for (int a = first; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            flags_print_help(flags, n, usage);
            exit(0);
        }
        if (strncmp(arg, "--", 2) != 0) usage_error("unexpected argument '%s' (flags start with --; see --help)", arg);
        Flag *f = NULL;
        for (int i = 0; i < n; i++) {
            if (strcmp(arg + 2, flags[i].name) == 0) f = &flags[i];
        }
        if (f == NULL) usage_error("unknown flag %s (see --help)", arg);
        if (a + 1 >= argc) usage_error("flag %s needs a value", arg);
        flag_set(f, argv[++a]);
        f->given = 1;
    }
}

// Was this flag (by name) given on the command line?
static int flag_given(const Flag *flags, int n, const char *name) {
    for (int i = 0; i < n; i++) {
        if (strcmp(flags[i].name, name) == 0) return flags[i].given;
    }
    return 0;
}

#endif // RESCALE_ARGS_H
