/*
 * test/test_tokenizer.c: common/tokenizer.h driven from test/test_tokenizer.sh, which compares what this prints
 * with what tiktoken and sentencepiece give (test/fixtures/tokenizer/, written by dev/data/tokenizers.py).
 *
 *   test_tokenizer load VOCAB [V]            prints "vocab V bos B eos E unk U" (load-gpt2, load-llama2:
 *                                            that format's loader, not the one the first int picks)
 *   test_tokenizer decode-shard VOCAB SHARD N  the first N tokens of a token shard, decoded, raw bytes
 *   test_tokenizer decode VOCAB < FILE       per line "ids<TAB>...": prints "ids<TAB>decoding" (escaped)
 *   test_tokenizer encode VOCAB < FILE       per line an escaped string: prints its ids
 *
 * decode also checks that token-by-token decoding (tokenizer_decode_token) and a too-small buffer give the
 * same bytes; encode checks that decoding the ids gives the string back. Either failing exits 1.
 */
#include "dataloader.h"
#include "tokenizer.h"

// Bytes as one ASCII line, as dev/data/tokenizers.py's escape() writes them.
static void put_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') fputs("\\\\", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c >= 0x20 && c <= 0x7E) putchar(c);
        else printf("\\x%02X", c);
    }
}

// Undo the escaping in place; returns the length.
static size_t unescape(char *s) {
    size_t w = 0;
    for (size_t r = 0; s[r]; r++) {
        if (s[r] != '\\') {
            s[w++] = s[r];
            continue;
        }
        char c = s[++r];
        if (c == 'n') s[w++] = '\n';
        else if (c == 't') s[w++] = '\t';
        else if (c == 'r') s[w++] = '\r';
        else if (c == '\\') s[w++] = '\\';
        else if (c == 'x' && s[r + 1] && s[r + 2]) {
            char hex[3] = {s[r + 1], s[r + 2], 0};
            s[w++] = (char)strtol(hex, NULL, 16);
            r += 2;
        } else die("bad escape \\%c in input", c);
    }
    s[w] = 0;
    return w;
}

// One line of stdin without its newline, or NULL at the end.
static char *read_line(char **buf, size_t *cap) {
    ssize_t n = getline(buf, cap, stdin);
    if (n < 0) return NULL;
    if (n > 0 && (*buf)[n - 1] == '\n') (*buf)[n - 1] = 0;
    return *buf;
}

// Decode ids both ways (whole, token by token) and with a short buffer; all three must agree.
static size_t decode_checked(const Tokenizer *t, const int *ids, int n, char **out) {
    size_t len = tokenizer_decode(t, ids, n, NULL, 0);
    *out = (char *)malloc_check(len + 1);
    if (tokenizer_decode(t, ids, n, *out, len + 1) != len) die("tokenizer_decode: two lengths for one sequence");
    char *stream = (char *)malloc_check(len + 1);
    size_t used = 0;
    int at_start = 1;
    for (int i = 0; i < n; i++) {
        int k;
        const char *p = tokenizer_decode_token(t, &at_start, ids[i], &k);
        if (used + (size_t)k > len) die("tokenizer_decode_token gives more bytes than tokenizer_decode");
        memcpy(stream + used, p, (size_t)k);
        used += (size_t)k;
    }
    if (used != len || memcmp(stream, *out, len) != 0) die("token-by-token decoding differs from tokenizer_decode");
    if (len > 1) {
        char small[2];
        if (tokenizer_decode(t, ids, n, small, 2) != len || small[0] != (*out)[0] || small[1] != 0) {
            die("tokenizer_decode into a 2-byte buffer: wrong length or bytes");
        }
    }
    free(stream);
    return len;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_tokenizer load|decode-shard|decode|encode VOCAB [...]\n");
        return EXIT_USAGE;
    }
    const char *mode = argv[1];
    Tokenizer t;
    int V = strncmp(mode, "load", 4) == 0 && argc > 3 ? atoi(argv[3]) : 0;
    if (strcmp(mode, "load-gpt2") == 0) {
        tokenizer_load_gpt2(&t, argv[2], V);
    } else if (strcmp(mode, "load-llama2") == 0) {
        tokenizer_load_llama2(&t, argv[2], V);
    } else {
        tokenizer_load(&t, argv[2], V);
    }
    char *line = NULL;
    size_t cap = 0;
    if (strncmp(mode, "load", 4) == 0) {
        printf("vocab %d bos %d eos %d unk %d\n", t.vocab_size, t.bos_id, t.eos_id, t.unk_id);
    } else if (strcmp(mode, "decode-shard") == 0 && argc == 5) {
        uint16_t *tok;
        long n = shard_read(argv[3], 0, t.vocab_size, &tok);
        long want = atol(argv[4]);
        if (want > n) die("%s has %ld tokens, fewer than %ld", argv[3], n, want);
        int *ids = (int *)malloc_check((size_t)want * sizeof(int));
        for (long i = 0; i < want; i++) ids[i] = tok[i];
        char *out;
        size_t len = decode_checked(&t, ids, (int)want, &out);
        fwrite(out, 1, len, stdout);
        free(out), free(ids), free(tok);
    } else if (strcmp(mode, "decode") == 0) {
        int *ids = NULL;
        while (read_line(&line, &cap)) {
            char *tab = strchr(line, '\t');
            if (tab) *tab = 0;
            ids = (int *)realloc(ids, (strlen(line) / 2 + 1) * sizeof(int));
            int n = 0;
            for (char *p = line, *end; *p; p = end) {
                long v = strtol(p, &end, 10);
                if (end == p) break;
                ids[n++] = (int)v;
            }
            char *out;
            size_t len = decode_checked(&t, ids, n, &out);
            fputs(line, stdout);
            putchar('\t');
            put_escaped(out, len);
            putchar('\n');
            free(out);
        }
        free(ids);
    } else if (strcmp(mode, "encode") == 0) {
        while (read_line(&line, &cap)) {
            size_t len = unescape(line);
            int *ids = (int *)malloc_check((len + 1) * sizeof(int));
            int n = tokenizer_encode(&t, line, len, ids);
            for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
            putchar('\n');
            char *back;
            size_t blen = decode_checked(&t, ids, n, &back);
            if (blen != len || memcmp(back, line, len) != 0) {
                fprintf(stderr, "encode then decode does not give back: ");
                fflush(stdout);
                put_escaped(line, len);
                die("(round trip)");
            }
            free(back), free(ids);
        }
    } else {
        die("unknown mode %s", mode);
    }
    free(line);
    tokenizer_free(&t);
    return 0;
}
