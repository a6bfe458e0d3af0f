/*
 * common/tokenizer.h: token ids <-> text for the two vocabularies the trainers use, read from the vocabulary
 * files users already have (docs/formats.md, "Vocabulary files"):
 *
 *   gpt2_tokenizer.bin (llm.c):  int32 header[256] = {20240328, version 1|2, V, EOT id (version 2)}, then per
 *                                token a uint8 length and that many bytes (the token's bytes as tiktoken has them).
 *   tokenizer.bin (llama2.c):    int32 max_token_length, then per token float32 score, int32 len, len bytes.
 *                                The file does not store V: the caller passes it (the model knows it), or 0 to
 *                                take as many tokens as the file holds. Pieces keep SentencePiece's U+2581 as a
 *                                plain space and BOS/EOS as "\n<s>\n" / "\n</s>\n" (llama2.c's export; a file with
 *                                U+2581 or "<s>" kept is read the same way).
 *
 * Decoding follows the Python libraries, checked by test/test_tokenizer.sh:
 *   GPT-2: a token's bytes as stored; EOT gives "<|endoftext|>" as tiktoken's decode does.
 *   Llama: as sentencepiece.decode: <s> and </s> give nothing, <unk> gives " \u2047 ", <0xAB> the byte 0xAB, a piece
 *   its text with U+2581 as a space, except that the first token that is not <s>/</s> loses one leading space
 *   (the dummy prefix the encoder added). Unlike sentencepiece (which returns str) byte tokens that do not form
 *   valid UTF-8 come out as the raw bytes, not U+FFFD.
 *
 * Encoding (prompts) follows tiktoken's encode_ordinary and sentencepiece's encode without BOS/EOS; see
 * tokenizer_encode below for the algorithms and what is approximated.
 */
#ifndef RESCALE_TOKENIZER_H
#define RESCALE_TOKENIZER_H

#include "utils.h"

#define GPT2_TOKENIZER_MAGIC 20240328
#define TOKENIZER_HEADER_INTS 256

enum { TOKENIZER_GPT2 = 1, TOKENIZER_LLAMA2 = 2 };

typedef struct {
    int kind;             // TOKENIZER_GPT2 or TOKENIZER_LLAMA2
    int vocab_size;
    int bos_id, eos_id;   // GPT-2: both the EOT token; Llama: <s>, </s>; -1 if the vocabulary has none
    int unk_id;           // Llama's <unk>, -1 for GPT-2
    char *path;           // the file it came from, for messages
    char *bytes;          // every token's piece, one after the other (Llama: U+2581 already a space)
    int *offset;          // token i's piece is bytes[offset[i] .. offset[i+1])
    float *score;         // Llama: merge priority (higher merges first); GPT-2: NULL (the id is the rank)
    signed char *type;    // per token: TOK_NORMAL, TOK_CONTROL, TOK_UNKNOWN or TOK_BYTE
    unsigned char *byte;  // per token: the byte a TOK_BYTE token stands for
    int byte_id[256];     // Llama: the byte token of each byte value (byte fallback), -1 if none
    int *table;           // hash table of the mergeable pieces: token ids, -1 empty
    unsigned table_mask;  // table size - 1 (a power of two)
} Tokenizer;

enum { TOK_NORMAL = 0, TOK_CONTROL = 1, TOK_UNKNOWN = 2, TOK_BYTE = 3 };

// ----------------------------------------------------------------------------
// loading

static unsigned tok_hash_(const char *s, int n) { // FNV-1a
    unsigned h = 2166136261u;
    for (int i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

// The id of the mergeable token whose piece is s[0..n), or -1.
static int tokenizer_lookup(const Tokenizer *t, const char *s, int n) {
    for (unsigned h = tok_hash_(s, n) & t->table_mask;; h = (h + 1) & t->table_mask) {
        int id = t->table[h];
        if (id < 0) return -1;
        if (t->offset[id + 1] - t->offset[id] == n && memcmp(t->bytes + t->offset[id], s, (size_t)n) == 0) return id;
    }
}

static int tok_hexval_(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// After the pieces are read: token types, the byte tokens' bytes, the lookup table. Only normal tokens are
// mergeable: the libraries never produce <s>, <unk>, <0xAB> or <|endoftext|> from text (encode_ordinary).
static void tokenizer_index_(Tokenizer *t) {
    int V = t->vocab_size;
    t->type = (signed char *)calloc_check((size_t)V, 1);
    t->byte = (unsigned char *)calloc_check((size_t)V, 1);
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    if (t->kind == TOKENIZER_LLAMA2) t->bos_id = t->eos_id = t->unk_id = -1;
    for (int i = 0; i < V; i++) {
        const char *p = t->bytes + t->offset[i];
        int n = t->offset[i + 1] - t->offset[i];
        if (t->kind == TOKENIZER_GPT2) { // GPT-2's one special token is EOT, set by the loader
            if (i == t->eos_id) t->type[i] = TOK_CONTROL;
            continue;
        }
        if ((n == 5 && memcmp(p, "\n<s>\n", 5) == 0) || (n == 3 && memcmp(p, "<s>", 3) == 0)) {
            t->type[i] = TOK_CONTROL, t->bos_id = i;
        } else if ((n == 6 && memcmp(p, "\n</s>\n", 6) == 0) || (n == 4 && memcmp(p, "</s>", 4) == 0)) {
            t->type[i] = TOK_CONTROL, t->eos_id = i;
        } else if (n == 5 && memcmp(p, "<unk>", 5) == 0) {
            t->type[i] = TOK_UNKNOWN, t->unk_id = i;
        } else if (n == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>' && tok_hexval_(p[3]) >= 0 &&
                   tok_hexval_(p[4]) >= 0) {
            t->type[i] = TOK_BYTE, t->byte[i] = (unsigned char)(tok_hexval_(p[3]) * 16 + tok_hexval_(p[4]));
            if (t->byte_id[t->byte[i]] < 0) t->byte_id[t->byte[i]] = i;
        }
    }
    unsigned size = 1;
    while (size < 2u * (unsigned)V) size *= 2;
    t->table_mask = size - 1;
    t->table = (int *)malloc_check(size * sizeof(int));
    for (unsigned h = 0; h < size; h++) t->table[h] = -1;
    for (int i = 0; i < V; i++) {
        if (t->type[i] != TOK_NORMAL) continue;
        const char *p = t->bytes + t->offset[i];
        int n = t->offset[i + 1] - t->offset[i];
        if (tokenizer_lookup(t, p, n) >= 0) continue; // a duplicate piece: the first id wins
        unsigned h = tok_hash_(p, n) & t->table_mask;
        while (t->table[h] >= 0) h = (h + 1) & t->table_mask;
        t->table[h] = i;
    }
}

static char *tok_strdup_(const char *s) {
    char *d = (char *)malloc_check(strlen(s) + 1);
    strcpy(d, s);
    return d;
}

// llm.c's gpt2_tokenizer.bin. vocab_size 0: any; otherwise the file must hold exactly that many tokens.
static void tokenizer_load_gpt2(Tokenizer *t, const char *path, int vocab_size) {
    memset(t, 0, sizeof(*t));
    FILE *f = fopen_check(path, "rb");
    int32_t header[TOKENIZER_HEADER_INTS];
    fread_check(header, sizeof(int32_t), TOKENIZER_HEADER_INTS, f, path);
    if (header[0] != GPT2_TOKENIZER_MAGIC) {
        die("vocabulary %s has bad magic %d (want %d: is it llm.c's gpt2_tokenizer.bin?)", path, header[0],
            GPT2_TOKENIZER_MAGIC);
    }
    if (header[1] != 1 && header[1] != 2) die("vocabulary %s has version %d, want 1 or 2", path, header[1]);
    int V = header[2];
    if (V <= 0 || V > (1 << 24)) die("vocabulary %s has a bad token count %d", path, V);
    if (vocab_size > 0 && V != vocab_size) die("vocabulary %s has %d tokens, the model %d", path, V, vocab_size);
    t->kind = TOKENIZER_GPT2;
    t->vocab_size = V;
    t->path = tok_strdup_(path);
    t->offset = (int *)malloc_check(((size_t)V + 1) * sizeof(int));
    size_t cap = (size_t)V * 8, used = 0;
    t->bytes = (char *)malloc_check(cap);
    for (int i = 0; i < V; i++) {
        unsigned char n;
        fread_check(&n, 1, 1, f, path);
        if (used + n > cap) {
            cap = 2 * cap + n;
            t->bytes = (char *)realloc(t->bytes, cap);
            if (!t->bytes) die("out of memory reading vocabulary %s", path);
        }
        t->offset[i] = (int)used;
        fread_check(t->bytes + used, 1, n, f, path);
        used += n;
    }
    t->offset[V] = (int)used;
    if (fgetc(f) != EOF) die("vocabulary %s has bytes after its %d tokens", path, V);
    fclose(f);
    // version 1 has no EOT entry: llm.c's GPT-2 convention is the last token, 50256
    int eot = header[1] == 2 ? header[3] : V - 1;
    if (eot < 0 || eot >= V) die("vocabulary %s has EOT id %d outside its %d tokens", path, eot, V);
    t->bos_id = t->eos_id = eot;
    t->unk_id = -1;
    tokenizer_index_(t);
}

// llama2.c's tokenizer.bin. vocab_size 0: as many tokens as the file holds (a file cut exactly between two
// tokens then goes unnoticed); otherwise exactly that many, and anything after them is an error.
static void tokenizer_load_llama2(Tokenizer *t, const char *path, int vocab_size) {
    memset(t, 0, sizeof(*t));
    long fsize = file_size(path);
    FILE *f = fopen_check(path, "rb");
    int32_t max_len;
    fread_check(&max_len, sizeof(int32_t), 1, f, path);
    // there is no magic: a first int that cannot be a token length says it is not this format
    if (max_len <= 0 || max_len > 4096) {
        die("vocabulary %s starts with %d, not a max token length (is it llama2.c's tokenizer.bin?)", path, max_len);
    }
    int cap_tokens = vocab_size > 0 ? vocab_size : 1024;
    t->kind = TOKENIZER_LLAMA2;
    t->path = tok_strdup_(path);
    t->score = (float *)malloc_check((size_t)cap_tokens * sizeof(float));
    t->offset = (int *)malloc_check(((size_t)cap_tokens + 1) * sizeof(int));
    size_t cap = (size_t)(fsize > 0 ? fsize : 1024), used = 0; // pieces only shrink (U+2581 -> ' ')
    t->bytes = (char *)malloc_check(cap);
    int V = 0;
    long pos = 4;
    while (vocab_size > 0 ? V < vocab_size : pos < fsize) {
        if (V == cap_tokens) {
            cap_tokens *= 2;
            t->score = (float *)realloc(t->score, (size_t)cap_tokens * sizeof(float));
            t->offset = (int *)realloc(t->offset, ((size_t)cap_tokens + 1) * sizeof(int));
            if (!t->score || !t->offset) die("out of memory reading vocabulary %s", path);
        }
        int32_t n;
        fread_check(&t->score[V], sizeof(float), 1, f, path);
        fread_check(&n, sizeof(int32_t), 1, f, path);
        if (n < 0 || n > max_len) die("vocabulary %s: token %d has length %d, outside 0..%d", path, V, n, max_len);
        if (used + (size_t)n > cap) die("vocabulary %s is truncated at token %d", path, V);
        fread_check(t->bytes + used, 1, (size_t)n, f, path);
        t->offset[V] = (int)used;
        // U+2581 (E2 96 81), SentencePiece's word marker, is a space here, as in llama2.c's file
        size_t w = used;
        for (size_t r = used; r < used + (size_t)n; r++) {
            if (r + 2 < used + (size_t)n && memcmp(t->bytes + r, "\xE2\x96\x81", 3) == 0) {
                t->bytes[w++] = ' ';
                r += 2;
            } else {
                t->bytes[w++] = t->bytes[r];
            }
        }
        used = w;
        pos += 8 + n;
        V++;
    }
    t->offset[V] = (int)used;
    if (fgetc(f) != EOF) die("vocabulary %s has bytes after its %d tokens", path, V);
    fclose(f);
    if (V == 0) die("vocabulary %s holds no tokens", path);
    t->vocab_size = V;
    tokenizer_index_(t);
}

// Either format, told apart by GPT-2's magic (llama2.c's file starts with a small max token length).
static void tokenizer_load(Tokenizer *t, const char *path, int vocab_size) {
    FILE *f = fopen_check(path, "rb");
    int32_t first = 0;
    fread_check(&first, sizeof(int32_t), 1, f, path);
    fclose(f);
    if (first == GPT2_TOKENIZER_MAGIC) {
        tokenizer_load_gpt2(t, path, vocab_size);
    } else {
        tokenizer_load_llama2(t, path, vocab_size);
    }
}

static void tokenizer_free(Tokenizer *t) {
    free(t->path), free(t->bytes), free(t->offset), free(t->score), free(t->type), free(t->byte), free(t->table);
    memset(t, 0, sizeof(*t));
}

// ----------------------------------------------------------------------------
// decoding

// The bytes token `id` adds to the text; *len gets their count. *at_start is 1 before the first token of a
// text (set it to 1 to start one) and tracks sentencepiece's rule: the first token that is not <s>/</s> loses
// one leading space. Lets a generator print token by token what tokenizer_decode gives for the whole sequence.
static const char *tokenizer_decode_token(const Tokenizer *t, int *at_start, int id, int *len) {
    static const char unk_surface[] = " \xE2\x81\x87 "; // sentencepiece's " ⁇ " for <unk>
    if (id < 0 || id >= t->vocab_size) {
        die("token id %d is outside vocabulary %s (%d tokens)", id, t->path, t->vocab_size);
    }
    const char *p = t->bytes + t->offset[id];
    int n = t->offset[id + 1] - t->offset[id];
    if (t->kind == TOKENIZER_GPT2) {
        *len = n;
        return p;
    }
    switch (t->type[id]) {
    case TOK_CONTROL: *len = 0; return p; // no change to *at_start
    case TOK_UNKNOWN: *at_start = 0, *len = (int)sizeof(unk_surface) - 1; return unk_surface;
    case TOK_BYTE: *at_start = 0, *len = 1; return (const char *)&t->byte[id];
    default: break;
    }
    if (*at_start && n > 0 && p[0] == ' ') p++, n--;
    *at_start = 0;
    *len = n;
    return p;
}

// Decode n ids into out (at most cap bytes, NUL-terminated when cap > 0). Returns the decoded length, which
// may exceed cap - 1: then out holds its first cap - 1 bytes and a second call with a larger buffer gets all.
static size_t tokenizer_decode(const Tokenizer *t, const int *ids, int n, char *out, size_t cap) {
    size_t used = 0;
    int at_start = 1;
    for (int i = 0; i < n; i++) {
        int len;
        const char *p = tokenizer_decode_token(t, &at_start, ids[i], &len);
        for (int k = 0; k < len; k++, used++) {
            if (used + 1 < cap) out[used] = p[k];
        }
    }
    if (cap > 0) out[used < cap ? used : cap - 1] = 0;
    return used;
}

// ----------------------------------------------------------------------------
// encoding

// One UTF-8 code point at s[0..n) (n > 0): returns its byte length and sets *cp. A byte that does not start a
// valid sequence is taken alone, as code point 0xFFFFFFFF (tiktoken and sentencepiece only take valid text).
static int tok_utf8_(const unsigned char *s, size_t n, uint32_t *cp) {
    int len = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;
    if (len == 0 || (size_t)len > n) return *cp = 0xFFFFFFFFu, 1;
    uint32_t c = len == 1 ? s[0] : len == 2 ? (s[0] & 0x1Fu) : len == 3 ? (s[0] & 0x0Fu) : (s[0] & 0x07u);
    for (int k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return *cp = 0xFFFFFFFFu, 1;
        c = (c << 6) | (s[k] & 0x3Fu);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min_cp[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return *cp = 0xFFFFFFFFu, 1;
    *cp = c;
    return len;
}

enum { TOK_LETTER, TOK_NUMBER, TOK_SPACE, TOK_OTHER };

/*
 * The class of a code point for GPT-2's pre-split regex: \p{L}, \p{N}, \s (Unicode White_Space, as the Rust
 * regex tiktoken uses), or anything else. Exact for ASCII, Latin-1 and whitespace. Above Latin-1 only a table
 * of ranges: the common punctuation and symbol blocks (general punctuation, currency, arrows, math, box
 * drawing, dingbats, CJK and fullwidth punctuation, emoji, variation selectors, zero-width joiners, combining
 * diacritics U+0300-036F, private use) are "other", the common digit forms (Arabic-Indic, Devanagari,
 * super/subscripts, Roman numerals, circled numbers, fullwidth digits) are numbers, and every other code point
 * is a letter. So letters and digits of Latin, Greek, Cyrillic, CJK, kana, Hangul are right; wrong are mainly
 * combining marks of other scripts (Indic vowel signs, Hebrew/Arabic points: taken as letters), rarer digit
 * forms and symbols outside the listed blocks.
 */
static int tok_class_(uint32_t c) {
    if (c < 0x80) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return TOK_LETTER;
        if (c >= '0' && c <= '9') return TOK_NUMBER;
        if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return TOK_SPACE;
        return TOK_OTHER;
    }
    if (c < 0x100) {
        if (c == 0x85 || c == 0xA0) return TOK_SPACE;
        if (c == 0xAA || c == 0xB5 || c == 0xBA || (c >= 0xC0 && c != 0xD7 && c != 0xF7)) return TOK_LETTER;
        if (c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE)) return TOK_NUMBER;
        return TOK_OTHER;
    }
    if (c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
        c == 0x3000) {
        return TOK_SPACE;
    }
    static const uint32_t number[][2] = {
        {0x0660, 0x0669}, {0x06F0, 0x06F9}, {0x0966, 0x096F}, {0x2070, 0x2070}, {0x2074, 0x2079},
        {0x2080, 0x2089}, {0x2150, 0x2182}, {0x2185, 0x2189}, {0x2460, 0x249B}, {0x24EA, 0x24FF},
        {0x2776, 0x2793}, {0x3007, 0x3007}, {0x3021, 0x3029}, {0x3038, 0x303A}, {0xFF10, 0xFF19},
        {0x1D7CE, 0x1D7FF}, {0x1F100, 0x1F10C},
    };
    static const uint32_t other[][2] = {
        {0x0300, 0x036F}, {0x2010, 0x2027}, {0x2030, 0x205E}, {0x2060, 0x206F}, {0x200B, 0x200F},
        {0x207A, 0x207E}, {0x208A, 0x208E}, {0x20A0, 0x20FF}, {0x2100, 0x2101}, {0x2103, 0x2106},
        {0x2108, 0x2109}, {0x2116, 0x2118}, {0x211E, 0x2123}, {0x2125, 0x2125}, {0x2127, 0x2127},
        {0x2129, 0x2129}, {0x212E, 0x212E}, {0x2140, 0x2144}, {0x214A, 0x214D}, {0x214F, 0x214F},
        {0x2190, 0x245F}, {0x249C, 0x24E9}, {0x2500, 0x2775}, {0x2794, 0x2BFF}, {0x2E00, 0x2E7F},
        {0x3001, 0x3004}, {0x3008, 0x3020}, {0x302A, 0x3030}, {0x3036, 0x3037}, {0x303D, 0x303F},
        {0x3099, 0x309C}, {0x30A0, 0x30A0}, {0x30FB, 0x30FB}, {0xE000, 0xF8FF}, {0xFE00, 0xFE6F},
        {0xFEFF, 0xFEFF}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF20}, {0xFF3B, 0xFF40}, {0xFF5B, 0xFF65},
        {0xFFE0, 0xFFFF}, {0x1F000, 0x1F0FF}, {0x1F10D, 0x1FAFF}, {0xE0000, 0xE0FFF}, {0xF0000, 0x10FFFF},
        {0xFFFFFFFF, 0xFFFFFFFF}, // a byte of invalid UTF-8
    };
    for (size_t i = 0; i < sizeof(number) / sizeof(number[0]); i++) {
        if (c >= number[i][0] && c <= number[i][1]) return TOK_NUMBER;
    }
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        if (c >= other[i][0] && c <= other[i][1]) return TOK_OTHER;
    }
    return TOK_LETTER;
}

// One symbol of the merge loops: text[start .. start + len) with its token id; merges only where mergeable.
typedef struct {
    int start, len, id, mergeable;
} TokSymbol_;

/*
 * The merge loop both BPEs share: while some adjacent pair of symbols concatenates to a mergeable token, merge
 * the best pair, the leftmost on ties. GPT-2: best = lowest id (tiktoken's rank: ids are in merge order).
 * Llama: best = highest score (sentencepiece's BPE and llama2.c). best[i] caches pair (i, i+1), so a merge
 * costs one scan and two look-ups.
 */
static int tok_merge_(const Tokenizer *t, const char *text, TokSymbol_ *sym, int n, int *best) {
    int gpt2 = t->kind == TOKENIZER_GPT2;
    for (int i = 0; i + 1 < n; i++) {
        best[i] = sym[i].mergeable && sym[i + 1].mergeable
                      ? tokenizer_lookup(t, text + sym[i].start, sym[i].len + sym[i + 1].len) : -1;
    }
    while (n > 1) {
        int k = -1;
        for (int i = 0; i + 1 < n; i++) {
            if (best[i] < 0) continue;
            if (k < 0 || (gpt2 ? best[i] < best[k] : t->score[best[i]] > t->score[best[k]])) k = i;
        }
        if (k < 0) break;
        sym[k].id = best[k];
        sym[k].len += sym[k + 1].len;
        memmove(sym + k + 1, sym + k + 2, (size_t)(n - k - 2) * sizeof(*sym));
        memmove(best + k + 1, best + k + 2, (size_t)(n > k + 3 ? n - k - 3 : 0) * sizeof(*best));
        n--;
        for (int i = k - 1; i <= k; i++) {
            if (i < 0 || i + 1 >= n) continue;
            best[i] = sym[i].mergeable && sym[i + 1].mergeable
                          ? tokenizer_lookup(t, text + sym[i].start, sym[i].len + sym[i + 1].len) : -1;
        }
    }
    return n;
}

// GPT-2: byte-level BPE of one pre-split piece text[0..n), tiktoken's way (a piece that is a token is taken
// whole, without merging).
static int tok_bpe_gpt2_(const Tokenizer *t, const char *text, int n, int *ids, TokSymbol_ *sym, int *best) {
    int whole = tokenizer_lookup(t, text, n);
    if (whole >= 0) return ids[0] = whole, 1;
    for (int i = 0; i < n; i++) {
        sym[i].start = i, sym[i].len = 1, sym[i].mergeable = 1;
        sym[i].id = tokenizer_lookup(t, text + i, 1);
        if (sym[i].id < 0) die("vocabulary %s has no token for the byte 0x%02X", t->path, (unsigned char)text[i]);
    }
    int m = tok_merge_(t, text, sym, n, best);
    for (int i = 0; i < m; i++) ids[i] = sym[i].id;
    return m;
}

// The end of the GPT-2 pre-split piece that starts at s[i] (n = text length). The regex, first match wins:
//   's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+$ | \s+(?!\S) | \s
static size_t tok_presplit_(const unsigned char *s, size_t n, size_t i) {
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return i + 3;
    }
    uint32_t cp;
    size_t j = i + (s[i] == ' ' && i + 1 < n ? 1 : 0);
    int cls = tok_class_((tok_utf8_(s + j, n - j, &cp), cp));
    if (cls == TOK_SPACE && j > i) j = i, cls = TOK_SPACE; // " " then whitespace: the space starts a run
    if (cls != TOK_SPACE) {
        while (j < n) { // the run of cls after the optional space
            int len = tok_utf8_(s + j, n - j, &cp);
            if (tok_class_(cp) != cls) break;
            j += (size_t)len;
        }
        return j;
    }
    // whitespace: the whole run at the end of text, else the run less its last character, else one character
    size_t last = i, end = i;
    while (end < n) {
        int len = tok_utf8_(s + end, n - end, &cp);
        if (tok_class_(cp) != TOK_SPACE) break;
        last = end;
        end += (size_t)len;
    }
    if (end == n) return end;
    if (last > i) return last;
    return end;
}

/*
 * Encode text[0..len) into ids (room for len + 1 ids), return their count. No BOS/EOS: prepend t->bos_id
 * yourself (a Llama prompt starts with <s>, a GPT-2 one with <|endoftext|>).
 *
 * GPT-2, as tiktoken's encode_ordinary ("<|endoftext|>" in text is plain text): split with the regex above
 * (tok_presplit_; tok_class_ says what is approximated beyond Latin-1), then byte-level BPE on each piece.
 *
 * Llama, as sentencepiece's encode with Llama 2's model (identity normalizer, dummy prefix) and as llama2.c's
 * encoder: " " + text with spaces as U+2581 (the file already has them as spaces), one symbol per UTF-8 code
 * point that is a token, else one byte token per byte (byte fallback), then merge by score. Byte tokens never
 * merge. test/test_tokenizer.sh compares both with the libraries on every string of its fixture.
 */
static int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int *ids) {
    if (len > (size_t)1 << 30) die("tokenizer_encode: text of %zu bytes is too long", len);
    const unsigned char *s = (const unsigned char *)text;
    TokSymbol_ *sym = (TokSymbol_ *)malloc_check((len + 1) * sizeof(TokSymbol_));
    int *best = (int *)malloc_check((len + 1) * sizeof(int));
    int n = 0;
    if (t->kind == TOKENIZER_GPT2) {
        for (size_t i = 0; i < len;) {
            size_t end = tok_presplit_(s, len, i);
            n += tok_bpe_gpt2_(t, text + i, (int)(end - i), ids + n, sym, best);
            i = end;
        }
    } else if (len > 0) {
        char *buf = (char *)malloc_check(len + 1); // the dummy prefix, then the text
        buf[0] = ' ';
        memcpy(buf + 1, text, len);
        int nsym = 0;
        for (size_t i = 0; i < len + 1;) {
            uint32_t cp;
            int cl = tok_utf8_((const unsigned char *)buf + i, len + 1 - i, &cp);
            int id = cp == 0xFFFFFFFFu ? -1 : tokenizer_lookup(t, buf + i, cl);
            if (id >= 0) {
                sym[nsym].start = (int)i, sym[nsym].len = cl, sym[nsym].id = id, sym[nsym].mergeable = 1, nsym++;
            } else {
                for (int k = 0; k < cl; k++) {
                    unsigned char b = (unsigned char)buf[i + k];
                    int bid = t->byte_id[b] >= 0 ? t->byte_id[b] : t->unk_id;
                    if (bid < 0) die("vocabulary %s has neither a byte token for 0x%02X nor <unk>", t->path, b);
                    sym[nsym].start = (int)(i + k), sym[nsym].len = 1, sym[nsym].id = bid, sym[nsym].mergeable = 0;
                    nsym++;
                }
            }
            i += (size_t)cl;
        }
        n = tok_merge_(t, buf, sym, nsym, best);
        for (int i = 0; i < n; i++) ids[i] = sym[i].id;
        free(buf);
    }
    free(sym);
    free(best);
    return n;
}

#endif // RESCALE_TOKENIZER_H
