/*
 * mlp_sweep.c: the ReLU-MLP initialisation experiments of Paper B
 * ("Weight Initialization and Variance Dynamics in DNNs and LLMs", arXiv 2510.09423).
 *
 *   mlp_sweep e1 [flags]   E1: sweep the std σ of N(0, σ²) weights on MNIST (Paper B §4.1)
 *   mlp_sweep e2 [flags]   E2: Xavier normal vs Kaiming uniform on a binary Wine task (§4.2)
 *
 * One file, read top to bottom: data readers (IDX, CSV) → the MLP (init schemes,
 * forward, backward, Adam) → one training run → statistics → the two experiments → main.
 *
 * The model is a stack of Linear layers with ReLU between them and softmax
 * cross-entropy on the last one (E2 uses the same two-logit head for its binary task).
 * The forward and backward passes of a minibatch are written out by hand; the
 * gradient goes into one buffer, and Adam updates every parameter once per minibatch.
 * Independent runs (σ values, seeds) go to different cores with OpenMP; each run is
 * single-threaded, so results do not depend on the thread count.
 *
 * Why it is fast (see docs/mlp_sweep.md): a weight matrix is stored transposed,
 * W^T[in][out], so that one input value touches one contiguous row of outputs.
 * MNIST pixels are about 80% zeros, so the first layer multiplies by its input's
 * nonzero entries only. That is exact, not an approximation: a zero input contributes
 * nothing to the output, nor to dW. The hidden layers, whose inputs are mostly nonzero
 * after the ReLU, multiply densely in register blocks.
 */
#include <float.h>
#include <omp.h>
#include <zlib.h>

#include "args.h"
#include "utils.h"

#ifdef REAL_DOUBLE
typedef double real; // the test build: tight finite-difference gradient checks
#define real_sqrt sqrt
#define REAL_MAX DBL_MAX
#else
typedef float real;
#define real_sqrt sqrtf
#define REAL_MAX FLT_MAX
#endif

#define MAX_LAYERS 9 // linear layers: up to 8 hidden widths plus the output layer

// ----------------------------------------------------------------------------
// Data sets: n examples of dim features (dense, row-major) and integer labels,
// plus the list of each example's nonzero features for the sparse first layer.

typedef struct {
    int n, dim, nclass;
    real *x;            // n * dim
    int *y;             // n labels in [0, nclass)
    long *nz_start;     // example i's nonzero features are nz_idx/nz_val[nz_start[i] .. nz_start[i+1])
    int *nz_idx;
    real *nz_val;
} Dataset;

// ---- what the readers check. Every number a file gives is range-checked before it sizes
// anything, and a failure is one "error:" line naming the file and the field, exit status 1
// (EXIT_RUNTIME, through die). A size a header implies is computed in uint64 and capped, so
// that a hostile header gives a message, not an int overflow or a nonsense allocation.

// fopen and gzopen open a directory without complaint (the first read fails), so look first.
static void check_data_file(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) die("cannot open %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) die("%s is a directory, not a data file", path);
}

// calloc that names the file and the header field whose value asked for the memory.
static void *calloc_for(size_t n, size_t size, const char *path, const char *what) {
    if (size != 0 && n > SIZE_MAX / size) {
        die("%s: %s needs %zu x %zu bytes, more than memory can address", path, what, n, size);
    }
    void *p = calloc(n > 0 ? n : 1, size > 0 ? size : 1);
    if (p == NULL) die("%s: out of memory allocating %zu x %zu bytes for %s", path, n, size, what);
    return p;
}

// n examples of dim features; path and what name the file and header fields that gave n and dim
// (NULL for a data set made from another, whose sizes were checked already).
static void dataset_alloc_for(Dataset *d, int n, int dim, int nclass, const char *path, const char *what) {
    d->n = n;
    d->dim = dim;
    d->nclass = nclass;
    if (path) {
        d->x = calloc_for((size_t)n * dim, sizeof(real), path, what);
        d->y = calloc_for((size_t)n, sizeof(int), path, what);
    } else {
        d->x = calloc_check((size_t)n * dim, sizeof(real));
        d->y = calloc_check((size_t)n, sizeof(int));
    }
    d->nz_start = NULL;
    d->nz_idx = NULL;
    d->nz_val = NULL;
}

static void dataset_alloc(Dataset *d, int n, int dim, int nclass) { dataset_alloc_for(d, n, dim, nclass, NULL, NULL); }

static void dataset_free(Dataset *d) {
    free(d->x);
    free(d->y);
    free(d->nz_start);
    free(d->nz_idx);
    free(d->nz_val);
    memset(d, 0, sizeof(*d));
}

// Build the nonzero lists once, after the features are final.
static void dataset_index_nonzeros(Dataset *d) {
    long nnz = 0;
    for (size_t i = 0; i < (size_t)d->n * d->dim; i++) nnz += d->x[i] != 0;
    d->nz_start = malloc_check((size_t)(d->n + 1) * sizeof(long));
    d->nz_idx = malloc_check((size_t)nnz * sizeof(int));
    d->nz_val = malloc_check((size_t)nnz * sizeof(real));
    long p = 0;
    for (int i = 0; i < d->n; i++) {
        d->nz_start[i] = p;
        const real *xi = d->x + (size_t)i * d->dim;
        for (int k = 0; k < d->dim; k++) {
            if (xi[k] != 0) {
                d->nz_idx[p] = k;
                d->nz_val[p] = xi[k];
                p++;
            }
        }
    }
    d->nz_start[d->n] = p;
}

// Copy the examples rows[0..n) of src into a new data set.
static void dataset_subset(Dataset *dst, const Dataset *src, const int *rows, int n) {
    dataset_alloc(dst, n, src->dim, src->nclass);
    for (int i = 0; i < n; i++) {
        memcpy(dst->x + (size_t)i * src->dim, src->x + (size_t)rows[i] * src->dim, src->dim * sizeof(real));
        dst->y[i] = src->y[rows[i]];
    }
}

// ---- IDX files (MNIST's format): big-endian int32 magic 0x0000 08 ND (08 = unsigned
// bytes, ND = number of dimensions), ND big-endian int32 sizes, then the bytes.
// zlib's gzread reads gzip and plain files alike, so "x.gz" and "x" both work.

static uint32_t be32(const uint8_t b[4]) {
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | (uint32_t)b[3];
}

static void gzread_check(gzFile f, void *dst, size_t n, const char *path, const char *what) {
    uint8_t *p = dst;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int got = gzread(f, p, chunk);
        if (got < 0) {
            int err;
            const char *msg = gzerror(f, &err);
            die("%s: cannot read %s: %s", path, what, msg);
        }
        if (got == 0) die("%s is truncated: the file ends inside the %s", path, what);
        p += got;
        n -= (size_t)got;
    }
}

// Limits on what an IDX header may claim. All values: 2^30 bytes, 23 times MNIST's 60k
// training images (a data set is then 4 GiB of floats). One example: 2^16 values, 83 times
// MNIST's 784; they are the MLP's input width, so its first layer has that many rows.
#define IDX_MAX_VALUES ((uint64_t)1 << 30)
#define IDX_MAX_EXAMPLE ((uint64_t)1 << 16)

// Read an IDX file of unsigned bytes with ndim (1 or 3) dimensions; sizes go to dims[].
static uint8_t *idx_read(const char *path, int ndim, int dims[3]) {
    static const char *names[2][3] = {{"label count"}, {"image count", "rows", "columns"}};
    const char **field = names[ndim == 3];
    check_data_file(path);
    gzFile f = gzopen(path, "rb");
    if (f == NULL) die("cannot open %s: %s", path, strerror(errno));
    uint8_t hdr[4];
    gzread_check(f, hdr, 4, path, "IDX header");
    uint32_t magic = be32(hdr);
    uint32_t want = 0x800u | (uint32_t)ndim;
    if (magic != want) {
        die("%s is not an IDX file of %d-dimensional unsigned bytes: magic 0x%08x, expected 0x%08x", path, ndim,
            magic, want);
    }
    // each size is at most 1e8 < 2^27, so a product of three cannot overflow uint64
    uint64_t total = 1, example = 1;
    for (int i = 0; i < ndim; i++) {
        gzread_check(f, hdr, 4, path, "IDX header");
        uint32_t d = be32(hdr);
        if (d == 0 || d > 100000000u) {
            die("%s: header field %d (%s) is %u, outside [1, 100000000]", path, i + 1, field[i], d);
        }
        dims[i] = (int)d;
        total *= d;
        if (i > 0) example *= d;
    }
    if (example > IDX_MAX_EXAMPLE) {
        die("%s: header fields 2, 3 (rows, columns) give %d x %d = %llu values per image, more than the limit %llu",
            path, dims[1], dims[2], (unsigned long long)example, (unsigned long long)IDX_MAX_EXAMPLE);
    }
    if (total > IDX_MAX_VALUES) {
        die("%s: header field 1 (%s) %d x %llu values each = %llu bytes of data, more than the limit %llu", path,
            field[0], dims[0], (unsigned long long)example, (unsigned long long)total,
            (unsigned long long)IDX_MAX_VALUES);
    }
    // a plain (not gzip) file's size is known: a header that claims more than it holds is
    // a truncated file, found before the claim sizes an allocation
    struct stat st;
    uint64_t hdr_bytes = 4 + 4 * (uint64_t)ndim;
    if (gzdirect(f) && stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size < hdr_bytes + total) {
        die("%s is truncated: its header gives %llu bytes of data, the file has %llu after the header", path,
            (unsigned long long)total, (unsigned long long)st.st_size - hdr_bytes);
    }
    uint8_t *data = calloc_for((size_t)total, 1, path, ndim == 3 ? "the data of header fields 1-3 (images, rows, columns)"
                                                                 : "the data of header field 1 (label count)");
    gzread_check(f, data, total, path, "IDX data");
    uint8_t extra;
    int more = gzread(f, &extra, 1);
    if (more != 0) die("%s has more bytes than its header says (%llu)", path, (unsigned long long)total);
    gzclose(f);
    return data;
}

// "<dir>/<name>" or "<dir>/<name>.gz", whichever exists; 0 if neither.
static int find_data_file(char *out, size_t cap, const char *dir, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
    if (access(out, R_OK) == 0) return 1;
    snprintf(out, cap, "%s/%s.gz", dir, name);
    return access(out, R_OK) == 0;
}

// Images (n, rows, cols) and labels (n) into a data set with pixels scaled to [0, 1]
// (x / 255, what torchvision's ToTensor gives; no mean subtraction, so zeros stay zeros).
static void mnist_load_pair(Dataset *d, const char *img_path, const char *lbl_path) {
    int idims[3], ldims[3];
    uint8_t *img = idx_read(img_path, 3, idims);
    uint8_t *lbl = idx_read(lbl_path, 1, ldims);
    if (idims[0] != ldims[0]) die("%s has %d images but %s has %d labels", img_path, idims[0], lbl_path, ldims[0]);
    int n = idims[0], dim = (int)((size_t)idims[1] * idims[2]); // <= IDX_MAX_EXAMPLE, checked by idx_read
    dataset_alloc_for(d, n, dim, 10, img_path, "the images as floats (header fields 1-3)");
    for (size_t i = 0; i < (size_t)n * dim; i++) d->x[i] = (real)img[i] / (real)255;
    for (int i = 0; i < n; i++) {
        if (lbl[i] > 9) die("%s: label %d of example %d is not a digit 0..9", lbl_path, lbl[i], i);
        d->y[i] = lbl[i];
    }
    free(img);
    free(lbl);
}

// MNIST (or Fashion-MNIST) from a folder of IDX files. With the 60k training files
// present (and split "auto") we train on them and test on the 10k test set. Without
// them we split the 10k test set deterministically: example i goes to the test split
// when i % 5 == 4 (2,000 examples), else to training (8,000). Taking every fifth
// example keeps both halves of the test set (two writer populations) in each split.
static void mnist_load(Dataset *train, Dataset *test, const char *dir, const char *split, char *desc, size_t cap) {
    char ti[4096], tl[4096], ri[4096], rl[4096];
    struct stat st;
    if (stat(dir, &st) != 0) die("--mnist %s: cannot open the folder: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) die("--mnist %s is not a folder (it names the folder that holds the IDX files)", dir);
    if (!find_data_file(ti, sizeof(ti), dir, "t10k-images-idx3-ubyte")) {
        die("%s: no t10k-images-idx3-ubyte(.gz) (see docs/mlp_sweep.md, data)", dir);
    }
    if (!find_data_file(tl, sizeof(tl), dir, "t10k-labels-idx1-ubyte")) {
        die("%s: no t10k-labels-idx1-ubyte(.gz)", dir);
    }
    int have_train = find_data_file(ri, sizeof(ri), dir, "train-images-idx3-ubyte") &&
                     find_data_file(rl, sizeof(rl), dir, "train-labels-idx1-ubyte");
    if (have_train && strcmp(split, "auto") == 0) {
        mnist_load_pair(train, ri, rl);
        mnist_load_pair(test, ti, tl);
        snprintf(desc, cap, "%s: %d training images, %d test images", dir, train->n, test->n);
    } else {
        Dataset all;
        mnist_load_pair(&all, ti, tl);
        // fewer than 5 leaves the test split empty, and the test accuracy NaN
        if (all.n < 5) {
            die("%s has %d images; the split (every fifth, i %% 5 == 4, is test) needs at least 5 to fill both halves",
                ti, all.n);
        }
        int *rows = malloc_check((size_t)all.n * sizeof(int));
        int ntr = 0, nte = 0;
        for (int i = 0; i < all.n; i++) if (i % 5 != 4) rows[ntr++] = i;
        dataset_subset(train, &all, rows, ntr);
        for (int i = 0; i < all.n; i++) if (i % 5 == 4) rows[nte++] = i;
        dataset_subset(test, &all, rows, nte);
        snprintf(desc, cap, "%s: the %d test images split %d train / %d test (i %% 5 == 4 is test)", dir, all.n, ntr,
                 nte);
        free(rows);
        dataset_free(&all);
    }
    dataset_index_nonzeros(train);
    dataset_index_nonzeros(test);
}

// ---- Wine (scikit-learn's copy of UCI Wine): a header line "178,13,class_0,class_1,class_2"
// (rows, features, class names), then one line per wine: 13 numbers and the class index.

// Split a line at commas in place; returns the number of fields.
static int split_commas(char *line, char **fields, int cap) {
    int n = 0;
    char *p = line;
    for (;;) {
        if (n < cap) fields[n] = p;
        n++;
        char *c = strchr(p, ',');
        if (!c) break;
        *c = '\0';
        p = c + 1;
    }
    return n;
}

// A field as it may be quoted in a one-line message: at most 40 bytes, anything not
// printable ASCII (a stray newline, a NUL, binary junk) shown as '?'.
static const char *quoted(const char *s, char buf[48]) {
    int i = 0;
    for (; s[i] && i < 40; i++) buf[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    if (s[i]) buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
    buf[i] = '\0';
    return buf;
}

static int is_blank(const char *s) {
    while (*s == ' ' || *s == '\t') s++;
    return *s == '\0';
}

// Field `field` (1-based; `what` says what it holds) of line `line`: a finite number. strtod
// reads "" and "  " as nothing, but skipping trailing spaces first made that look like a
// whole field read, so a blank field became 0: blanks are rejected before strtod.
static double parse_number(const char *s, const char *path, int line, int field, const char *what) {
    char q[48];
    if (is_blank(s)) die("%s:%d: field %d (%s) is blank", path, line, field, what);
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t') end++;
    quoted(s, q);
    if (end == s || *end != '\0') die("%s:%d: field %d ('%s') is not a number (%s)", path, line, field, q, what);
    if (!isfinite(v)) die("%s:%d: field %d ('%s') is not finite (%s)", path, line, field, q, what);
    if (errno == ERANGE) die("%s:%d: field %d ('%s') is out of a double's range (%s)", path, line, field, q, what);
    return v;
}

// A count in the header: a whole number in [lo, hi] (strtod would take "13.5" and truncate it).
static int parse_count(const char *s, const char *path, int field, const char *what, long lo, long hi) {
    char q[48];
    if (is_blank(s)) die("%s:1: field %d (%s) is blank", path, field, what);
    const char *p = s;
    while (*p == ' ' || *p == '\t') p++;
    const char *digits = p;
    while (*p >= '0' && *p <= '9') p++;
    const char *stop = p;
    while (*p == ' ' || *p == '\t') p++;
    if (stop == digits || *p != '\0') {
        die("%s:1: field %d (%s) '%s' is not a whole number", path, field, what, quoted(s, q));
    }
    if (stop - digits > 12) die("%s:1: field %d (%s) '%s' is above %ld", path, field, what, quoted(s, q), hi);
    long v = strtol(digits, NULL, 10); // at most 12 digits: no overflow
    if (v < lo || v > hi) die("%s:1: field %d (%s) is %ld, outside [%ld, %ld]", path, field, what, v, lo, hi);
    return (int)v;
}

static void wine_load(Dataset *d, const char *path) {
    check_data_file(path);
    FILE *f = fopen_check(path, "r");
    char *line = NULL;
    size_t cap = 0;
    char *fields[64], q[48], what[32];
    ssize_t len = getline(&line, &cap, f);
    if (len < 0) die("%s is empty", path);
    // the line's end is not part of its last field (nor of a message that quotes it)
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    int nf = split_commas(line, fields, 64);
    if (nf < 4 || nf > 64) die("%s:1: header should be 'rows,features,class names...', got %d fields", path, nf);
    int rows = parse_count(fields[0], path, 1, "rows", 1, 100000000);
    int feats = parse_count(fields[1], path, 2, "features", 1, 62);
    int nclass = nf - 2;
    for (int k = 2; k < nf; k++) {
        if (is_blank(fields[k])) die("%s:1: field %d (class name %d) is blank", path, k + 1, k - 1);
    }
    // each row has feats + 1 non-blank fields, each a character and a comma or newline: a row
    // count the file cannot hold is caught here, before it sizes an allocation
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)rows * 2 * (feats + 1) > (uint64_t)st.st_size) {
        die("%s:1: field 1 (rows) is %d, but %d rows of %d fields do not fit in the file's %lld bytes", path, rows,
            rows, feats + 1, (long long)st.st_size);
    }
    dataset_alloc_for(d, rows, feats, nclass, path, "the rows x features of header fields 1, 2");
    int r = 0, lineno = 1;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (line[0] == '\0') continue; // blank (e.g. a last empty line)
        if (r >= rows) die("%s:%d: more rows than the header's %d", path, lineno, rows);
        int n = split_commas(line, fields, 64);
        if (n != feats + 1) die("%s:%d: expected %d fields (%d features and the class), got %d", path, lineno, feats + 1, feats, n);
        for (int k = 0; k < feats; k++) {
            snprintf(what, sizeof(what), "feature %d", k + 1);
            double v = parse_number(fields[k], path, lineno, k + 1, what);
            // finite as a double is not enough: 1e39 would become inf as a float
            if (fabs(v) > REAL_MAX) die("%s:%d: field %d ('%s') is too large for a %zu-byte real (%s)", path, lineno,
                                        k + 1, quoted(fields[k], q), sizeof(real), what);
            d->x[(size_t)r * feats + k] = (real)v;
        }
        double c = parse_number(fields[feats], path, lineno, feats + 1, "the class");
        if (c != floor(c) || c < 0 || c >= nclass) {
            die("%s:%d: field %d: class '%s' is not an integer in [0, %d)", path, lineno, feats + 1,
                quoted(fields[feats], q), nclass);
        }
        d->y[r++] = (int)c;
    }
    if (ferror(f)) die("cannot read %s: %s", path, strerror(errno));
    if (r != rows) die("%s: the header says %d rows but the file has %d", path, rows, r);
    free(line);
    fclose_check(f, path);
}

// E2's data: class `positive` (label 1) against the rest (label 0); a fixed split,
// every fifth wine (i % 5 == 4) for validation; features standardised with the
// training split's mean and (population) std, applied to both splits.
static void wine_binary_split(Dataset *train, Dataset *val, const char *path, int positive) {
    Dataset all;
    wine_load(&all, path);
    if (positive >= all.nclass) die("%s has %d classes; --positive-class %d does not exist", path, all.nclass, positive);
    // fewer than 5 leaves validation empty, and val_acc NaN
    if (all.n < 5) {
        die("%s has %d wines; the split (every fifth, i %% 5 == 4, is validation) needs at least 5 to fill both halves",
            path, all.n);
    }
    for (int i = 0; i < all.n; i++) all.y[i] = all.y[i] == positive;
    all.nclass = 2;
    int *rows = malloc_check((size_t)all.n * sizeof(int));
    int ntr = 0, nva = 0;
    for (int i = 0; i < all.n; i++) if (i % 5 != 4) rows[ntr++] = i;
    dataset_subset(train, &all, rows, ntr);
    for (int i = 0; i < all.n; i++) if (i % 5 == 4) rows[nva++] = i;
    dataset_subset(val, &all, rows, nva);
    for (int k = 0; k < all.dim; k++) {
        double mean = 0, var = 0;
        for (int i = 0; i < train->n; i++) mean += train->x[(size_t)i * all.dim + k];
        mean /= train->n;
        for (int i = 0; i < train->n; i++) {
            double dx = train->x[(size_t)i * all.dim + k] - mean;
            var += dx * dx;
        }
        double sd = sqrt(var / train->n);
        if (sd == 0) sd = 1;
        for (int i = 0; i < train->n; i++) train->x[(size_t)i * all.dim + k] = (real)((train->x[(size_t)i * all.dim + k] - mean) / sd);
        for (int i = 0; i < val->n; i++) {
            double z = (val->x[(size_t)i * all.dim + k] - mean) / sd;
            // a training split of one value (sd 0, taken as 1) and a validation value far from it
            // (1e38 against -1e38) give a difference a float cannot hold (training values are
            // within √n standard deviations of their mean, so they cannot)
            if (fabs(z) > REAL_MAX) {
                die("%s: feature %d of data row %d (validation) is too far from the training split's mean "
                    "to standardise (%g)", path, k + 1, 5 * i + 5, z);
            }
            val->x[(size_t)i * all.dim + k] = (real)z;
        }
    }
    free(rows);
    dataset_free(&all);
    dataset_index_nonzeros(train);
    dataset_index_nonzeros(val);
}

// ----------------------------------------------------------------------------
// The MLP: width[0] inputs → Linear → ReLU → ... → Linear → width[nlayers] logits.
// All parameters live in one buffer (and so do their gradients and Adam's m, v).
// Layer l's weight is stored transposed, Wt[in][out] (nn.Linear keeps W[out][in]),
// followed by its bias[out].

typedef struct {
    int nlayers;
    int width[MAX_LAYERS + 1];
    size_t w_off[MAX_LAYERS], b_off[MAX_LAYERS];
    size_t nparams;
    real *params, *grads, *m, *v;
    long step; // Adam steps taken
} Mlp;

static void mlp_create(Mlp *m, const int *width, int nlayers) {
    memset(m, 0, sizeof(*m));
    m->nlayers = nlayers;
    size_t off = 0;
    for (int l = 0; l <= nlayers; l++) m->width[l] = width[l];
    for (int l = 0; l < nlayers; l++) {
        m->w_off[l] = off;
        off += (size_t)width[l] * width[l + 1];
        m->b_off[l] = off;
        off += (size_t)width[l + 1];
    }
    m->nparams = off;
    m->params = calloc_check(off, sizeof(real));
    m->grads = calloc_check(off, sizeof(real));
    m->m = calloc_check(off, sizeof(real));
    m->v = calloc_check(off, sizeof(real));
}

static void mlp_free(Mlp *m) {
    free(m->params);
    free(m->grads);
    free(m->m);
    free(m->v);
}

// ---- initialisation schemes (Paper B §3 and §4; docs/methods.md). fan_in = in, fan_out = out.
typedef enum { INIT_NORMAL, INIT_XAVIER_NORMAL, INIT_KAIMING_UNIFORM, INIT_TORCH_DEFAULT } InitScheme;
static const char *INIT_NAMES[] = {"normal", "xavier_normal", "kaiming_uniform", "torch_default"};

static InitScheme init_from_name(const char *s) {
    for (int i = 0; i < 4; i++) if (strcmp(s, INIT_NAMES[i]) == 0) return (InitScheme)i;
    usage_error("unknown init scheme '%s' (normal, xavier_normal, kaiming_uniform, torch_default)", s);
}

// normal:           W ~ N(0, σ²), b = 0                           (E1's sweep)
// xavier_normal:    W ~ N(0, 2/(fan_in+fan_out)), b = 0            (Glorot & Bengio)
// kaiming_uniform:  W ~ U(−β, β), β = √2·√(3/fan_in) = √(6/fan_in), b = 0
//                   (PyTorch's kaiming_uniform_, mode fan_in, nonlinearity relu)
// torch_default:    nn.Linear's own reset_parameters: kaiming_uniform_ with a = √5,
//                   i.e. W ~ U(−1/√fan_in, 1/√fan_in), and b ~ U(−1/√fan_in, 1/√fan_in)
// Biases start at 0 for the first three so that only the weight scheme differs.
static void mlp_init(Mlp *m, InitScheme scheme, double sigma, Rng *rng) {
    for (int l = 0; l < m->nlayers; l++) {
        int in = m->width[l], out = m->width[l + 1];
        real *W = m->params + m->w_off[l], *b = m->params + m->b_off[l];
        size_t n = (size_t)in * out;
        double bound = 1.0 / sqrt((double)in);
        for (size_t i = 0; i < n; i++) {
            double w = 0;
            switch (scheme) {
            case INIT_NORMAL: w = sigma * rng_normal(rng); break;
            case INIT_XAVIER_NORMAL: w = sqrt(2.0 / (in + out)) * rng_normal(rng); break;
            case INIT_KAIMING_UNIFORM: w = sqrt(6.0 / in) * (2 * rng_uniform(rng) - 1); break;
            case INIT_TORCH_DEFAULT: w = bound * (2 * rng_uniform(rng) - 1); break;
            }
            W[i] = (real)w;
        }
        for (int j = 0; j < out; j++) b[j] = scheme == INIT_TORCH_DEFAULT ? (real)(bound * (2 * rng_uniform(rng) - 1)) : 0;
    }
    memset(m->grads, 0, m->nparams * sizeof(real));
    memset(m->m, 0, m->nparams * sizeof(real));
    memset(m->v, 0, m->nparams * sizeof(real));
    m->step = 0;
}

// ---- per-run scratch for one minibatch of up to maxb examples. A layer's input is
// seen through its nonzeros only, in two orders: per example (a list of feature index
// and value, which the forward walks) and per feature (the examples where it is
// nonzero and the values there, which the weight gradient walks).
typedef struct {
    int maxb;
    real *act[MAX_LAYERS + 1];  // act[l]: maxb × width[l], output of layer l-1 (after ReLU, except the logits act[L])
    real *grad[MAX_LAYERS + 1]; // grad[l]: maxb × width[l], d loss / d pre-activation of act[l]
    int *col_start;             // the first layer's input by columns: feature k's nonzeros are
    int *col_row;               //   entries col_start[k] .. col_start[k+1]-1, at example col_row,
    real *col_val;              //   with value col_val
    real *w_out_in[MAX_LAYERS]; // hidden layers' weights in nn.Linear's (out, in) layout (backward)
    int *next;                  // a cursor per column while the column lists are filled
    int *cur;                   // a cursor per example into its list of nonzeros
    real *pack;                 // a tile of a matrix copied to contiguous memory (see linear_forward)
    double grad_sq;             // Σ g² over all parameters, summed while the gradients are made
    int *row_n;                 // per example: number of nonzeros of the first layer's input
    const int **row_idx;        //   and where they are (feature index, value; in the data set)
    const real **row_val;
} Scratch;

static void scratch_create(Scratch *s, const Mlp *m, int maxb) {
    memset(s, 0, sizeof(*s));
    s->maxb = maxb;
    for (int l = 1; l <= m->nlayers; l++) {
        s->act[l] = calloc_check((size_t)maxb * m->width[l], sizeof(real));
        s->grad[l] = calloc_check((size_t)maxb * m->width[l], sizeof(real));
    }
    s->col_start = calloc_check(m->width[0] + 1, sizeof(int));
    s->col_row = calloc_check((size_t)maxb * m->width[0], sizeof(int));
    s->col_val = calloc_check((size_t)maxb * m->width[0], sizeof(real));
    for (int l = 1; l < m->nlayers; l++) s->w_out_in[l] = calloc_check((size_t)m->width[l] * m->width[l + 1], sizeof(real));
    s->cur = calloc_check(maxb, sizeof(int));
    s->pack = calloc_check((size_t)64 * (maxb > 128 ? maxb : 128), sizeof(real));
    s->next = calloc_check(m->width[0] + 1, sizeof(int));
    s->row_n = calloc_check(maxb, sizeof(int));
    s->row_idx = calloc_check(maxb, sizeof(int *));
    s->row_val = calloc_check(maxb, sizeof(real *));
}

static void scratch_free(Scratch *s, const Mlp *m) {
    for (int l = 1; l <= m->nlayers; l++) {
        free(s->act[l]);
        free(s->grad[l]);
    }
    free(s->col_start);
    free(s->col_row);
    free(s->col_val);
    for (int l = 1; l < m->nlayers; l++) free(s->w_out_in[l]);
    free(s->cur);
    free(s->pack);
    free(s->next);
    free(s->row_n);
    free(s->row_idx);
    free(s->row_val);
}

// Turn the per-example nonzero lists (s->row_*) of an nb × w matrix into column lists
// (start, crow, cval): a counting sort by column. Examples stay in order within a
// column, so every sum over examples below runs in the same order each time.
static void columns_from_rows(Scratch *s, int *restrict start, int *restrict crow, real *restrict cval, int w, int nb) {
    // (the lists are read through restrict locals: otherwise every count written could
    // alias s->row_n and force a reload per entry)
    int *restrict next = s->next;
    memset(start, 0, (w + 1) * sizeof(int));
    for (int b = 0; b < nb; b++) {
        const int *restrict idx = s->row_idx[b];
        int n = s->row_n[b];
        for (int i = 0; i < n; i++) start[idx[i] + 1]++;
    }
    for (int k = 0; k < w; k++) start[k + 1] += start[k];
    memcpy(next, start, w * sizeof(int));
    for (int b = 0; b < nb; b++) {
        const int *restrict idx = s->row_idx[b];
        const real *restrict val = s->row_val[b];
        int n = s->row_n[b];
        for (int i = 0; i < n; i++) {
            int e = next[idx[i]]++;
            crow[e] = b;
            cval[e] = val[i];
        }
    }
}

// ReLU in place; NaN becomes 0 here, but the loss is NaN already.
static void relu(real *a, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = a[i] > 0 ? a[i] : 0;
}

// ---- the products of a Linear layer, over the nonzero inputs only.
// `vec` is one AVX-512 register of reals (GCC's vector extension; 16 floats, or 8
// doubles in the test build), so the kernels say outright what the compiler should do.
// TILE outputs at a time, 4 registers: the forward keeps one example's tile of outputs
// in registers, the weight gradient one tile of a row of dW.
typedef real vec __attribute__((vector_size(64), aligned(sizeof(real)), may_alias));
#define VL ((int)(64 / sizeof(real)))
#define TILE (4 * VL)

static inline vec vload(const real *p) { return *(const vec *)p; }
static inline void vstore(real *p, vec v) { *(vec *)p = v; }

// Z[b][:] = bias + Σ_k X[b][k] · Wt[k][:] (the first layer's forward), X given by each
// example's list of nonzeros (s->row_*, sorted by k). For each tile of TILE outputs,
// the rows of Wt go in blocks of KBLOCK (128 × 64 floats = 32 KiB, in L1 while all
// examples pass over it); an example's tile of Z sits in registers meanwhile. Two
// sets of accumulators, alternating, so that the FMA latency is hidden.
#define KBLOCK 128
static void linear_forward(real *restrict Z, const real *restrict Wt, const real *restrict bias, int nin, int nout,
                           int nb, const Scratch *s, int *cur) {
    for (int b = 0; b < nb; b++) memcpy(Z + (size_t)b * nout, bias, nout * sizeof(real));
    int c = 0;
    for (; c + TILE <= nout; c += TILE) {
        for (int b = 0; b < nb; b++) cur[b] = 0;
        for (int k0 = 0; k0 < nin; k0 += KBLOCK) {
            int k1 = k0 + KBLOCK < nin ? k0 + KBLOCK : nin;
            // Copy this block of Wt's rows (tile columns only) to contiguous memory: the rows
            // are nout floats apart, a power of two (1 KiB for 256), which would map them all
            // onto a few L1 cache sets and evict them from each other.
            real *wp = s->pack;
            for (int k = k0; k < k1; k++) memcpy(wp + (size_t)(k - k0) * TILE, Wt + (size_t)k * nout + c, TILE * sizeof(real));
            for (int b = 0; b < nb; b++) {
                const int *idx = s->row_idx[b];
                const real *val = s->row_val[b];
                int i = cur[b], n = s->row_n[b];
                if (i >= n || idx[i] >= k1) continue;
                real *z = Z + (size_t)b * nout + c;
                vec a0 = vload(z), a1 = vload(z + VL), a2 = vload(z + 2 * VL), a3 = vload(z + 3 * VL);
                vec b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
                for (; i + 1 < n && idx[i + 1] < k1; i += 2) {
                    const real *w = wp + (size_t)(idx[i] - k0) * TILE, *u = wp + (size_t)(idx[i + 1] - k0) * TILE;
                    real x = val[i], y = val[i + 1];
                    a0 += x * vload(w), a1 += x * vload(w + VL), a2 += x * vload(w + 2 * VL), a3 += x * vload(w + 3 * VL);
                    b0 += y * vload(u), b1 += y * vload(u + VL), b2 += y * vload(u + 2 * VL), b3 += y * vload(u + 3 * VL);
                }
                if (i < n && idx[i] < k1) {
                    const real *w = wp + (size_t)(idx[i] - k0) * TILE;
                    real x = val[i];
                    a0 += x * vload(w), a1 += x * vload(w + VL), a2 += x * vload(w + 2 * VL), a3 += x * vload(w + 3 * VL);
                    i++;
                }
                cur[b] = i;
                vstore(z, a0 + b0);
                vstore(z + VL, a1 + b1);
                vstore(z + 2 * VL, a2 + b2);
                vstore(z + 3 * VL, a3 + b3);
            }
        }
    }
    // The outputs left over (e.g. the 10 logits): one register at a time, of which only the
    // first `width` lanes are real. The packed rows are zero-padded, and only `width`
    // outputs are loaded and stored.
    for (; c < nout; c += VL) {
        int width = nout - c < VL ? nout - c : VL;
        for (int b = 0; b < nb; b++) cur[b] = 0;
        for (int k0 = 0; k0 < nin; k0 += KBLOCK) {
            int k1 = k0 + KBLOCK < nin ? k0 + KBLOCK : nin;
            real *wp = s->pack;
            memset(wp, 0, (size_t)(k1 - k0) * VL * sizeof(real));
            for (int k = k0; k < k1; k++) memcpy(wp + (size_t)(k - k0) * VL, Wt + (size_t)k * nout + c, width * sizeof(real));
            for (int b = 0; b < nb; b++) {
                const int *idx = s->row_idx[b];
                const real *val = s->row_val[b];
                int i = cur[b], n = s->row_n[b];
                if (i >= n || idx[i] >= k1) continue;
                real *z = Z + (size_t)b * nout + c;
                vec a = {0}, e = {0};
                memcpy(&a, z, width * sizeof(real));
                for (; i + 1 < n && idx[i + 1] < k1; i += 2) {
                    a += val[i] * vload(wp + (size_t)(idx[i] - k0) * VL);
                    e += val[i + 1] * vload(wp + (size_t)(idx[i + 1] - k0) * VL);
                }
                if (i < n && idx[i] < k1) {
                    a += val[i] * vload(wp + (size_t)(idx[i] - k0) * VL);
                    i++;
                }
                cur[b] = i;
                a += e;
                memcpy(z, &a, width * sizeof(real));
            }
        }
    }
}

// dbias = Σ_b G[b][:] (written, not added); returns Σ dbias²
static double bias_grad(real *restrict dbias, const real *restrict G, int nb, int nout) {
    for (int j = 0; j < nout; j++) dbias[j] = 0;
    for (int b = 0; b < nb; b++) {
        for (int j = 0; j < nout; j++) dbias[j] += G[(size_t)b * nout + j];
    }
    double sq = 0;
    for (int j = 0; j < nout; j++) sq += (double)dbias[j] * dbias[j];
    return sq;
}

// Σ x² over n entries (16 lanes in real, then in double)
static double sum_squares(const real *x, size_t n) {
    real acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int l = 0; l < 16; l++) acc[l] += x[i + l] * x[i + l];
    }
    double s = 0;
    for (; i < n; i++) s += (double)x[i] * x[i];
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

// The first layer's weight gradient, over its input's nonzeros by columns:
// dWt[k][:] = Σ_b X[b][k] · G[b][:] and dbias = Σ_b G[b][:]   (written, not added)
// Returns Σ of the squares of everything it wrote (for the gradient norm, at no extra pass).
static double linear_backward_weights(real *restrict dWt, real *restrict dbias, const real *restrict G, int nin,
                                      int nout, int nb, const int *start, const int *crow, const real *cval,
                                      real *restrict pack) {
    vec sq = {0};
    double sq_rest = 0;
    int c = 0;
    for (; c + TILE <= nout; c += TILE) {
        // this tile of G's rows, contiguous (as the W block in linear_forward: no cache-set aliasing)
        for (int b = 0; b < nb; b++) memcpy(pack + (size_t)b * TILE, G + (size_t)b * nout + c, TILE * sizeof(real));
        for (int k = 0; k < nin; k++) {
            // two sets of accumulators, alternating entries: 8 independent FMA chains
            vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
            int e = start[k];
            for (; e + 1 < start[k + 1]; e += 2) {
                const real *g = pack + (size_t)crow[e] * TILE, *h = pack + (size_t)crow[e + 1] * TILE;
                real x = cval[e], y = cval[e + 1];
                a0 += x * vload(g), a1 += x * vload(g + VL), a2 += x * vload(g + 2 * VL), a3 += x * vload(g + 3 * VL);
                b0 += y * vload(h), b1 += y * vload(h + VL), b2 += y * vload(h + 2 * VL), b3 += y * vload(h + 3 * VL);
            }
            if (e < start[k + 1]) {
                const real *g = pack + (size_t)crow[e] * TILE;
                real x = cval[e];
                a0 += x * vload(g), a1 += x * vload(g + VL), a2 += x * vload(g + 2 * VL), a3 += x * vload(g + 3 * VL);
            }
            real *dw = dWt + (size_t)k * nout + c;
            a0 += b0, a1 += b1, a2 += b2, a3 += b3;
            vstore(dw, a0);
            vstore(dw + VL, a1);
            vstore(dw + 2 * VL, a2);
            vstore(dw + 3 * VL, a3);
            sq += a0 * a0 + a1 * a1 + a2 * a2 + a3 * a3;
        }
    }
    // the outputs left over, one register at a time (as in linear_forward): G's rows are
    // packed zero-padded, so the lanes past `width` stay 0 and add nothing to sq
    for (; c < nout; c += VL) {
        int width = nout - c < VL ? nout - c : VL;
        memset(pack, 0, (size_t)nb * VL * sizeof(real));
        for (int b = 0; b < nb; b++) memcpy(pack + (size_t)b * VL, G + (size_t)b * nout + c, width * sizeof(real));
        for (int k = 0; k < nin; k++) {
            vec a = {0}, b = {0};
            int e = start[k];
            for (; e + 1 < start[k + 1]; e += 2) {
                a += cval[e] * vload(pack + (size_t)crow[e] * VL);
                b += cval[e + 1] * vload(pack + (size_t)crow[e + 1] * VL);
            }
            if (e < start[k + 1]) a += cval[e] * vload(pack + (size_t)crow[e] * VL);
            a += b;
            memcpy(dWt + (size_t)k * nout + c, &a, width * sizeof(real));
            sq += a * a;
        }
    }
    for (int l = 0; l < VL; l++) sq_rest += sq[l];
    return sq_rest + bias_grad(dbias, G, nb, nout);
}

// ---- dense products, for the layers after the first. A ReLU leaves fewer zeros than the
// pixels have (at σ 0.05, 190 of 256 and 96 of 128 activations are nonzero), too few for
// the lists to pay: making them cost more than the products they saved. So the hidden
// layers multiply every entry, in register blocks: RB rows of C by one tile of up to
// TILE columns, RB × 4 accumulators, while a block of KBLOCK rows of B sits in
// contiguous memory (copied as in linear_forward). Every entry of C is summed in the
// order p = 0, 1, ..., K-1.
//   C[i][j] = init[j] + Σ_p A[i·ars + p·acs] · B[p·ldb + j]   (i < M, j < N; init NULL: 0)
// A is read through two strides, so that the same kernel takes X (forward), X^T (dW)
// and the output gradient (backward through the layer).
#define RB 6

// rows × nv registers of C (rows ≤ RB, nv ≤ 4, both constants where it is inlined) over
// kb rows of the packed block wp; `first`: start from init (or 0), else add to C. Only
// `width` columns of C are read and written (the packed block is zero beyond them).
static inline __attribute__((always_inline)) void dense_block(real *C, int ldc, int rows, int nv, int width,
                                                             const real *A, long ars, long acs, const real *wp, int kb,
                                                             const real *init, int first) {
    vec acc[RB][4];
    for (int r = 0; r < rows; r++) {
        for (int v = 0; v < nv; v++) {
            int n = width - v * VL < VL ? width - v * VL : VL;
            const real *src = first ? init : C + (size_t)r * ldc;
            acc[r][v] = (vec){0};
            if (src && n == VL) acc[r][v] = vload(src + v * VL);
            else if (src) memcpy(&acc[r][v], src + v * VL, n * sizeof(real)); // (a partial register)
        }
    }
    for (int p = 0; p < kb; p++) {
        const real *w = wp + (size_t)p * TILE;
        for (int r = 0; r < rows; r++) {
            real a = A[r * ars + p * acs];
            for (int v = 0; v < nv; v++) acc[r][v] += a * vload(w + v * VL);
        }
    }
    for (int r = 0; r < rows; r++) {
        for (int v = 0; v < nv; v++) {
            int n = width - v * VL < VL ? width - v * VL : VL;
            if (n == VL) vstore(C + (size_t)r * ldc + v * VL, acc[r][v]);
            else memcpy(C + (size_t)r * ldc + v * VL, &acc[r][v], n * sizeof(real));
        }
    }
}

// all M rows of C for one tile and one block of B, nv registers wide (a constant)
#define DENSE_ROWS(NV)                                                                                                 \
    do {                                                                                                               \
        int i = 0;                                                                                                     \
        for (; i + RB <= M; i += RB)                                                                                   \
            dense_block(C + (size_t)i * ldc + c, ldc, RB, NV, width, a + i * ars, ars, acs, pack, kb, ic, first);    \
        for (; i < M; i++)                                                                                             \
            dense_block(C + (size_t)i * ldc + c, ldc, 1, NV, width, a + i * ars, ars, acs, pack, kb, ic, first);     \
    } while (0)

static void dense_product(real *restrict C, int ldc, const real *init, const real *A, long ars, long acs,
                          const real *B, int ldb, int M, int N, int K, real *restrict pack) {
    for (int c = 0; c < N; c += TILE) {
        int width = N - c < TILE ? N - c : TILE, nv = (width + VL - 1) / VL;
        const real *ic = init ? init + c : NULL; // this tile's part of init
        for (int k0 = 0; k0 < K; k0 += KBLOCK) {
            int kb = K - k0 < KBLOCK ? K - k0 : KBLOCK, first = k0 == 0;
            for (int p = 0; p < kb; p++) {
                memcpy(pack + (size_t)p * TILE, B + (size_t)(k0 + p) * ldb + c, width * sizeof(real));
                memset(pack + (size_t)p * TILE + width, 0, (nv * VL - width) * sizeof(real));
            }
            const real *a = A + k0 * acs;
            switch (nv) {
            case 4: DENSE_ROWS(4); break;
            case 3: DENSE_ROWS(3); break;
            case 2: DENSE_ROWS(2); break;
            default: DENSE_ROWS(1); break;
            }
        }
    }
}

// W[j][k] = Wt[k][j]: a layer's weight in nn.Linear's (out, in) layout, for the
// backward product below. Made from Wt at each backward (cheap: hidden layers only).
// In 16 × 16 blocks, so that both the rows read and the rows written stay in cache.
static void transpose(real *restrict W, const real *restrict Wt, int nin, int nout) {
    for (int k0 = 0; k0 < nin; k0 += 16) {
        for (int j0 = 0; j0 < nout; j0 += 16) {
            int k1 = k0 + 16 < nin ? k0 + 16 : nin, j1 = j0 + 16 < nout ? j0 + 16 : nout;
            for (int j = j0; j < j1; j++) {
                for (int k = k0; k < k1; k++) W[(size_t)j * nin + k] = Wt[(size_t)k * nout + j];
            }
        }
    }
}

// ---- forward and backward of a minibatch

// Forward of the examples rows[0..nb) of d; the logits end up in s->act[nlayers] (nb × classes).
static void mlp_forward(const Mlp *m, Scratch *s, const Dataset *d, const int *rows, int nb) {
    for (int b = 0; b < nb; b++) {
        long st = d->nz_start[rows[b]];
        s->row_n[b] = (int)(d->nz_start[rows[b] + 1] - st);
        s->row_idx[b] = d->nz_idx + st;
        s->row_val[b] = d->nz_val + st;
    }
    for (int l = 0; l < m->nlayers; l++) {
        int nin = m->width[l], nout = m->width[l + 1];
        const real *Wt = m->params + m->w_off[l], *bias = m->params + m->b_off[l];
        if (l == 0) linear_forward(s->act[1], Wt, bias, nin, nout, nb, s, s->cur); // over the nonzero inputs
        else dense_product(s->act[l + 1], nout, bias, s->act[l], nin, 1, Wt, nout, nb, nout, nin, s->pack);
        if (l < m->nlayers - 1) relu(s->act[l + 1], (size_t)nb * nout);
    }
}

// Softmax cross-entropy of one example's logits z against label y. Writes
// scale · d loss/d z into g (scale = 1/B turns a sum over the batch into its mean)
// and returns the loss. In double after subtracting the max logit, so that logits
// of 1e6 (σ = 10) give a finite loss.
static double softmax_xent(const real *z, real *g, int nc, int y, double scale) {
    double zmax = z[0];
    for (int j = 1; j < nc; j++) if (z[j] > zmax) zmax = z[j];
    double sum = 0;
    for (int j = 0; j < nc; j++) sum += exp((double)z[j] - zmax);
    double lse = zmax + log(sum);
    for (int j = 0; j < nc; j++) g[j] = (real)(scale * (exp((double)z[j] - zmax) / sum - (j == y)));
    return lse - (double)z[y];
}

// Backward (after mlp_forward and the loss gradient in s->grad[nlayers]): writes every
// parameter's gradient into m->grads. Layer l maps act[l] (the examples when l = 0) to act[l+1].
static void mlp_backward(Mlp *m, Scratch *s, int nb) {
    s->grad_sq = 0;
    for (int l = m->nlayers - 1; l >= 0; l--) {
        int nin = m->width[l], nout = m->width[l + 1];
        real *dWt = m->grads + m->w_off[l], *dbias = m->grads + m->b_off[l];
        const real *G = s->grad[l + 1];
        if (l == 0) {
            // by the input's columns: its per-example lists are still those mlp_forward set
            columns_from_rows(s, s->col_start, s->col_row, s->col_val, nin, nb);
            s->grad_sq += linear_backward_weights(dWt, dbias, G, nin, nout, nb, s->col_start, s->col_row, s->col_val, s->pack);
            break; // no gradient for the examples
        }
        // dWt = act[l]^T · G: A = act[l] read down its columns
        dense_product(dWt, nout, NULL, s->act[l], 1, nin, G, nout, nin, nout, nb, s->pack);
        s->grad_sq += sum_squares(dWt, (size_t)nin * nout) + bias_grad(dbias, G, nb, nout);
        // grad[l] = (G · W) ⊙ [act[l] > 0], W in (out, in) layout. ReLU'(0) = 0, as in PyTorch.
        transpose(s->w_out_in[l], m->params + m->w_off[l], nin, nout);
        dense_product(s->grad[l], nin, NULL, G, nout, 1, s->w_out_in[l], nin, nb, nin, nout, s->pack);
        real *gin = s->grad[l];
        const real *a = s->act[l];
        for (size_t i = 0; i < (size_t)nb * nin; i++) gin[i] = a[i] > 0 ? gin[i] : 0;
    }
}

// ---- Adam, as torch.optim.Adam (no weight decay, no amsgrad):
//   m ← m + (1−β1)(g − m)   (PyTorch's lerp form of β1·m + (1−β1)·g)
//   v ← β2·v + (1−β2)·g²
//   p ← p − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + eps)
// (PyTorch divides by √(1−β2^t); we multiply by its inverse: one division fewer per
// parameter, a last-bit difference.)
typedef struct {
    double lr, beta1, beta2, eps;
} AdamConfig;

// The Makefile builds this file with -fno-math-errno: sqrt need not set errno (v >= 0
// anyway), so this loop vectorises. That changes no result (it is not -ffast-math).
static void adam_update(Mlp *m, const AdamConfig *a) {
    m->step++;
    double bc1 = 1.0 - pow(a->beta1, (double)m->step), bc2 = 1.0 - pow(a->beta2, (double)m->step);
    const real step_size = (real)(a->lr / bc1), inv_bc2_sqrt = (real)(1.0 / sqrt(bc2)), eps = (real)a->eps;
    const real one_b1 = (real)(1.0 - a->beta1), b2 = (real)a->beta2, one_b2 = (real)(1.0 - a->beta2);
    real *restrict p = m->params, *restrict mm = m->m, *restrict vv = m->v;
    const real *restrict g = m->grads;
    for (size_t i = 0; i < m->nparams; i++) {
        real gi = g[i];
        real mi = mm[i] + one_b1 * (gi - mm[i]);
        real vi = b2 * vv[i] + one_b2 * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
        p[i] -= step_size * mi / (real_sqrt(vi) * inv_bc2_sqrt + eps);
    }
}

// Global L2 norm of the gradient buffer (what PyTorch's clip_grad_norm_ would report).
// Training takes it from s->grad_sq, summed during the backward; this is the plain
// version, which the tests compare with it.
static double grad_norm(const Mlp *m) { return sqrt(sum_squares(m->grads, m->nparams)); }

// Forward and backward of a minibatch (the examples rows[0..nb), nb <= s->maxb): writes
// the gradient of the mean loss into m->grads (and its squared norm into s->grad_sq)
// and returns the mean loss.
static double mlp_batch_grad(Mlp *m, Scratch *s, const Dataset *d, const int *rows, int nb) {
    int L = m->nlayers, nc = m->width[L];
    mlp_forward(m, s, d, rows, nb);
    double loss = 0;
    for (int b = 0; b < nb; b++) {
        loss += softmax_xent(s->act[L] + (size_t)b * nc, s->grad[L] + (size_t)b * nc, nc, d->y[rows[b]], 1.0 / nb);
    }
    mlp_backward(m, s, nb);
    return loss / nb;
}

// Mean loss and accuracy over a whole data set (no gradients). A NaN logit never wins
// the argmax, so a broken model scores like a constant guess, and its loss is NaN.
static void mlp_evaluate(const Mlp *m, Scratch *s, const Dataset *d, double *loss, double *acc) {
    double sum = 0;
    int correct = 0, L = m->nlayers, nc = m->width[L];
    int *rows = malloc_check((size_t)s->maxb * sizeof(int));
    for (int start = 0; start < d->n; start += s->maxb) {
        int nb = d->n - start < s->maxb ? d->n - start : s->maxb;
        for (int b = 0; b < nb; b++) rows[b] = start + b;
        mlp_forward(m, s, d, rows, nb);
        for (int b = 0; b < nb; b++) {
            const real *z = s->act[L] + (size_t)b * nc;
            sum += softmax_xent(z, s->grad[L] + (size_t)b * nc, nc, d->y[start + b], 0.0);
            int best = 0;
            for (int j = 1; j < nc; j++) if (z[j] > z[best]) best = j;
            correct += best == d->y[start + b];
        }
    }
    free(rows);
    *loss = sum / d->n;
    *acc = (double)correct / d->n;
}

// ----------------------------------------------------------------------------
// One training run: a fresh model, `epochs` passes over the shuffled training set.

typedef struct {
    int nlayers;
    int width[MAX_LAYERS + 1];
    int epochs, batch;
    AdamConfig adam;
    int full_train_eval; // 1: train_loss[e] is the loss over the whole training set after epoch e
                         // (and [0] at init); 0: the mean minibatch loss during epoch e
} TrainConfig;

typedef struct {
    double *train_loss, *test_loss, *test_acc, *grad_norm; // [epochs + 1]; index 0 = at init
    double *step_grad_norm;                                  // [epochs * steps per epoch]
    long nsteps;
    int diverged_epoch; // first epoch with a NaN/inf loss, 0 if none
} RunLog;

static int steps_per_epoch(int n, int batch) { return (n + batch - 1) / batch; }

static void runlog_alloc(RunLog *r, const TrainConfig *c, int ntrain) {
    r->train_loss = calloc_check(c->epochs + 1, sizeof(double));
    r->test_loss = calloc_check(c->epochs + 1, sizeof(double));
    r->test_acc = calloc_check(c->epochs + 1, sizeof(double));
    r->grad_norm = calloc_check(c->epochs + 1, sizeof(double));
    r->step_grad_norm = calloc_check((size_t)c->epochs * steps_per_epoch(ntrain, c->batch), sizeof(double));
    r->nsteps = 0;
    r->diverged_epoch = 0;
}

static void runlog_free(RunLog *r) {
    free(r->train_loss);
    free(r->test_loss);
    free(r->test_acc);
    free(r->grad_norm);
    free(r->step_grad_norm);
}

// The weights come from init_seed, the minibatch order from data_seed (two streams,
// so that two init schemes with the same seeds see the same data order).
static void train_run(const TrainConfig *c, InitScheme scheme, double sigma, uint64_t init_seed, uint64_t data_seed,
                      const Dataset *train, const Dataset *test, RunLog *log) {
    Mlp m;
    Scratch s;
    mlp_create(&m, c->width, c->nlayers);
    int maxb = c->batch < train->n ? c->batch : train->n; // a minibatch is never larger than the data
    scratch_create(&s, &m, maxb > 256 ? maxb : 256);       // (evaluation goes in chunks of at least 256)
    Rng init_rng, data_rng;
    rng_seed(&init_rng, init_seed);
    rng_seed(&data_rng, data_seed);
    mlp_init(&m, scheme, sigma, &init_rng);

    int *order = malloc_check((size_t)train->n * sizeof(int));
    for (int i = 0; i < train->n; i++) order[i] = i;
    double loss0, acc0;
    if (c->full_train_eval) {
        mlp_evaluate(&m, &s, train, &loss0, &acc0);
        log->train_loss[0] = loss0;
    } else {
        log->train_loss[0] = NAN; // not measured: it would cost a pass over the training set
    }
    mlp_evaluate(&m, &s, test, &log->test_loss[0], &log->test_acc[0]);
    log->grad_norm[0] = NAN;
    for (int epoch = 1; epoch <= c->epochs; epoch++) {
        for (int i = train->n - 1; i > 0; i--) { // Fisher-Yates shuffle
            int j = (int)(rng_u64(&data_rng) % (uint64_t)(i + 1));
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        double loss_sum = 0, gn_sum = 0;
        int nsteps = 0, bad = 0;
        for (int start = 0; start < train->n; start += c->batch) {
            int nb = train->n - start < c->batch ? train->n - start : c->batch;
            double loss = mlp_batch_grad(&m, &s, train, order + start, nb);
            double gn = sqrt(s.grad_sq); // = grad_norm(&m), without another pass over the gradients
            if (!isfinite(loss) || !isfinite(gn)) bad = 1;
            loss_sum += loss;
            gn_sum += gn;
            log->step_grad_norm[log->nsteps++] = gn;
            nsteps++;
            adam_update(&m, &c->adam);
        }
        log->grad_norm[epoch] = gn_sum / nsteps;
        if (c->full_train_eval) {
            mlp_evaluate(&m, &s, train, &log->train_loss[epoch], &acc0);
        } else {
            log->train_loss[epoch] = loss_sum / nsteps;
        }
        mlp_evaluate(&m, &s, test, &log->test_loss[epoch], &log->test_acc[epoch]);
        if (bad || !isfinite(log->train_loss[epoch])) {
            // Diverged: the weights hold NaN/inf now, so later epochs would say nothing new.
            // The run stops here; its remaining epochs are recorded as NaN.
            log->diverged_epoch = epoch;
            log->test_acc[epoch] = NAN;
            for (int e = epoch + 1; e <= c->epochs; e++) {
                log->train_loss[e] = log->test_loss[e] = log->test_acc[e] = log->grad_norm[e] = NAN;
            }
            break;
        }
    }
    free(order);
    scratch_free(&s, &m);
    mlp_free(&m);
}

// ----------------------------------------------------------------------------
// Statistics for E2's summary

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Quantile q of n values with linear interpolation between order statistics
// (numpy's default). +inf values sort last (a run that never reached the target).
static double quantile(const double *v, int n, double q) {
    double *t = malloc_check((size_t)n * sizeof(double));
    memcpy(t, v, (size_t)n * sizeof(double));
    qsort(t, n, sizeof(double), cmp_double);
    double pos = q * (n - 1);
    int lo = (int)floor(pos);
    int hi = lo + 1 < n ? lo + 1 : lo;
    double r;
    if (isinf(t[lo]) || isinf(t[hi])) r = pos == lo ? t[lo] : t[hi];
    else r = t[lo] + (pos - lo) * (t[hi] - t[lo]);
    free(t);
    return r;
}

// Two-sided Mann-Whitney U test (Wilcoxon rank-sum) of a[0..na) against b[0..nb):
// average ranks for ties, the normal approximation with tie correction and a
// continuity correction (scipy.stats.mannwhitneyu's "asymptotic" method).
// Returns the p-value; *u gets U of sample a.
static double mann_whitney_u(const double *a, int na, const double *b, int nb, double *u) {
    int n = na + nb;
    double (*v)[2] = malloc_check((size_t)n * sizeof(*v)); // value, from a (1) or b (0)
    for (int i = 0; i < na; i++) v[i][0] = a[i], v[i][1] = 1;
    for (int i = 0; i < nb; i++) v[na + i][0] = b[i], v[na + i][1] = 0;
    qsort(v, n, sizeof(*v), cmp_double); // compares the first double of each pair
    double rank_a = 0, ties = 0;
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && v[j + 1][0] == v[i][0]) j++;
        double avg = 0.5 * (i + j) + 1; // ranks are 1-based
        double t = j - i + 1;
        ties += t * t * t - t;
        for (int k = i; k <= j; k++) if (v[k][1] == 1) rank_a += avg;
        i = j + 1;
    }
    free(v);
    *u = rank_a - na * (na + 1) / 2.0;
    double mu = na * (double)nb / 2.0;
    double var = na * (double)nb / 12.0 * ((n + 1) - ties / ((double)n * (n - 1)));
    if (var <= 0) return 1.0;
    double z = (fabs(*u - mu) - 0.5) / sqrt(var);
    if (z < 0) z = 0;
    return erfc(z / sqrt(2.0));
}

// ----------------------------------------------------------------------------
// Command-line helpers

// Parse "a,b,c" into up to cap positive numbers; returns the count.
static int parse_number_list(const char *flag, const char *s, double *out, int cap, int integer) {
    int n = 0;
    const char *p = s;
    while (1) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno != 0 || !isfinite(v) || v <= 0 || (*end != ',' && *end != '\0')) {
            usage_error("--%s: '%s' is not a comma-separated list of positive numbers", flag, s);
        }
        if (integer && (v != floor(v) || v > 1000000)) usage_error("--%s: '%s' must hold whole numbers up to 1000000", flag, s);
        if (n >= cap) usage_error("--%s: at most %d values", flag, cap);
        out[n++] = v;
        if (*end == '\0') break;
        p = end + 1;
    }
    return n;
}

// width[] = {inputs, hidden..., classes}; returns the number of linear layers.
static int build_widths(int *width, const char *hidden, int inputs, int classes) {
    double h[MAX_LAYERS - 1];
    int nh = parse_number_list("hidden", hidden, h, MAX_LAYERS - 1, 1);
    width[0] = inputs;
    for (int i = 0; i < nh; i++) width[i + 1] = (int)h[i];
    width[nh + 1] = classes;
    return nh + 1;
}

static int threads_or_all(int threads) { return threads > 0 ? threads : omp_get_num_procs(); }

static void print_widths(const TrainConfig *c) {
    for (int l = 0; l <= c->nlayers; l++) printf("%s%d", l ? "-" : "", c->width[l]);
}

static void csv_num(FILE *f, double v) {
    if (isnan(v)) fprintf(f, "nan");
    else fprintf(f, "%.9g", v);
}

// ----------------------------------------------------------------------------
// E1: σ sweep on MNIST (Paper B §4.1). Every σ starts from the same seed, so the runs
// differ only in scale: W = σ·Z with the same Z, and the same minibatch order.

typedef struct {
    const char *out, *hidden, *sigmas, *mnist, *split, *refs;
    int seed, threads, epochs, batch, num_sigmas;
    double lr, beta1, beta2, eps, sigma_min, sigma_max;
} E1Args;

static int e1_main(int argc, char **argv) {
    E1Args a;
    Flag flags[] = {
        {"out", FLAG_STRING, &a.out, "out/e1", 0, 0, NULL, "output folder for e1_epochs.csv, e1_summary.csv", 0},
        {"mnist", FLAG_STRING, &a.mnist, "data/mnist", 0, 0, NULL, "folder with the MNIST (or Fashion-MNIST) IDX files, .gz or not", 0},
        {"split", FLAG_CHOICE, &a.split, "auto", 0, 0, "auto|t10k", "auto: the 60k training files if present, else split t10k 8000/2000; t10k: always split", 0},
        {"sigmas", FLAG_STRING, &a.sigmas, NULL, 0, 0, NULL, "comma-separated σ values (overrides the log-spaced grid)", 0},
        {"sigma-min", FLAG_FLOAT, &a.sigma_min, "1e-4", 1e-30, 1e30, NULL, "smallest σ of the log-spaced grid", 0},
        {"sigma-max", FLAG_FLOAT, &a.sigma_max, "10", 1e-30, 1e30, NULL, "largest σ of the log-spaced grid", 0},
        {"num-sigmas", FLAG_INT, &a.num_sigmas, "25", 1, 1000, NULL, "number of σ values in the grid", 0},
        {"ref-inits", FLAG_STRING, &a.refs, "torch_default,kaiming_uniform,xavier_normal", 0, 0, NULL,
         "reference runs with these schemes after the sweep ('none' for none)", 0},
        {"hidden", FLAG_STRING, &a.hidden, "256,128", 0, 0, NULL, "hidden layer widths", 0},
        {"epochs", FLAG_INT, &a.epochs, "10", 1, 100000, NULL, "epochs per run", 0},
        {"batch", FLAG_INT, &a.batch, "128", 1, 1000000, NULL, "minibatch size", 0},
        {"lr", FLAG_FLOAT, &a.lr, "1e-3", 0, 10, NULL, "Adam learning rate", 0},
        {"beta1", FLAG_FLOAT, &a.beta1, "0.9", 0, 0.999999, NULL, "Adam β1", 0},
        {"beta2", FLAG_FLOAT, &a.beta2, "0.999", 0, 0.999999999, NULL, "Adam β2", 0},
        {"eps", FLAG_FLOAT, &a.eps, "1e-8", 0, 1, NULL, "Adam eps", 0},
        {"seed", FLAG_INT, &a.seed, "1", 0, INT_MAX, NULL, "random seed (the same for every σ)", 0},
        {"threads", FLAG_INT, &a.threads, "0", 0, 1024, NULL, "threads, one run each (0: all cores)", 0},
    };
    int nflags = sizeof(flags) / sizeof(flags[0]);
    flags_parse(flags, nflags, argc, argv, 2, "usage: mlp_sweep e1 [flags]   (E1: σ sweep of N(0, σ²) init on MNIST)");

    double sig[1000];
    int ns;
    if (a.sigmas) {
        ns = parse_number_list("sigmas", a.sigmas, sig, 1000, 0);
    } else {
        if (a.sigma_max < a.sigma_min) usage_error("--sigma-max (%g) is below --sigma-min (%g)", a.sigma_max, a.sigma_min);
        ns = a.num_sigmas;
        for (int i = 0; i < ns; i++) {
            double t = ns == 1 ? 0 : (double)i / (ns - 1);
            sig[i] = exp(log(a.sigma_min) + t * (log(a.sigma_max) - log(a.sigma_min))); // numpy.logspace
        }
    }
    InitScheme ref[4];
    int nref = 0;
    if (strcmp(a.refs, "none") != 0 && a.refs[0] != '\0') {
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", a.refs);
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            if (nref == 4) usage_error("--ref-inits: at most 4 schemes");
            ref[nref++] = init_from_name(tok);
        }
    }
    TrainConfig c = {.epochs = a.epochs, .batch = a.batch, .adam = {a.lr, a.beta1, a.beta2, a.eps}, .full_train_eval = 0};
    c.nlayers = build_widths(c.width, a.hidden, 784, 10); // checked again against the data below

    Dataset train, test;
    char desc[8400];
    mnist_load(&train, &test, a.mnist, a.split, desc, sizeof(desc));
    c.width[0] = train.dim;
    ensure_dir(a.out);

    int nruns = ns + nref, threads = threads_or_all(a.threads);
    printf("E1: MLP ");
    print_widths(&c);
    printf(", Adam lr %g, batch %d, %d epochs, %d σ values + %d reference inits, %d threads\n", a.lr, a.batch,
           a.epochs, ns, nref, threads);
    printf("data: %s\n", desc);
    fflush(stdout);
    RunLog *logs = malloc_check((size_t)nruns * sizeof(RunLog));
    for (int r = 0; r < nruns; r++) runlog_alloc(&logs[r], &c, train.n);
    double t0 = wall_seconds();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int r = 0; r < nruns; r++) {
        InitScheme sch = r < ns ? INIT_NORMAL : ref[r - ns];
        train_run(&c, sch, r < ns ? sig[r] : 0, (uint64_t)a.seed, (uint64_t)a.seed + 0x9E3779B9u, &train, &test, &logs[r]);
    }
    double elapsed = wall_seconds() - t0;

    char path[4200];
    snprintf(path, sizeof(path), "%s/e1_epochs.csv", a.out);
    FILE *fe = fopen_check(path, "w");
    fprintf(fe, "sigma,epoch,train_loss,test_acc,grad_norm,diverged\n");
    for (int r = 0; r < ns; r++) {
        for (int e = 1; e <= c.epochs; e++) {
            fprintf(fe, "%.6g,%d,", sig[r], e);
            csv_num(fe, logs[r].train_loss[e]);
            fputc(',', fe);
            csv_num(fe, logs[r].test_acc[e]);
            fputc(',', fe);
            csv_num(fe, logs[r].grad_norm[e]);
            fprintf(fe, ",%d\n", logs[r].diverged_epoch > 0 && e >= logs[r].diverged_epoch);
        }
    }
    fclose_check(fe, path);
    snprintf(path, sizeof(path), "%s/e1_summary.csv", a.out);
    FILE *fs = fopen_check(path, "w");
    fprintf(fs, "sigma,final_train_loss,final_test_acc,diverged\n");
    printf("\n%-16s %-14s %-14s %-10s %-12s %s\n", "sigma", "train_loss", "test_acc", "max_gnorm", "first_acc", "diverged");
    for (int r = 0; r < nruns; r++) {
        RunLog *g = &logs[r];
        double maxg = 0;
        for (int e = 1; e <= c.epochs; e++) if (g->grad_norm[e] > maxg) maxg = g->grad_norm[e];
        char name[32];
        if (r < ns) snprintf(name, sizeof(name), "%.3g", sig[r]);
        else snprintf(name, sizeof(name), "%s", INIT_NAMES[ref[r - ns]]);
        printf("%-16s %-14.6g %-14.4f %-10.3g %-12.4f %s\n", name, g->train_loss[c.epochs], g->test_acc[c.epochs], maxg,
               g->test_acc[1], g->diverged_epoch ? "yes" : "no");
        if (r < ns) {
            fprintf(fs, "%.6g,", sig[r]);
            csv_num(fs, g->train_loss[c.epochs]);
            fputc(',', fs);
            csv_num(fs, g->test_acc[c.epochs]);
            fprintf(fs, ",%d\n", g->diverged_epoch > 0);
        }
    }
    fclose_check(fs, path);
    if (nref > 0) {
        snprintf(path, sizeof(path), "%s/e1_reference.csv", a.out);
        FILE *fr = fopen_check(path, "w");
        fprintf(fr, "init,final_train_loss,final_test_acc,diverged\n");
        for (int r = ns; r < nruns; r++) {
            fprintf(fr, "%s,", INIT_NAMES[ref[r - ns]]);
            csv_num(fr, logs[r].train_loss[c.epochs]);
            fputc(',', fr);
            csv_num(fr, logs[r].test_acc[c.epochs]);
            fprintf(fr, ",%d\n", logs[r].diverged_epoch > 0);
        }
        fclose_check(fr, path);
    }
    printf("\nE1: %d runs in %.2f s (%d threads); wrote %s/e1_epochs.csv, %s/e1_summary.csv\n", nruns, elapsed, threads,
           a.out, a.out);
    for (int r = 0; r < nruns; r++) runlog_free(&logs[r]);
    free(logs);
    dataset_free(&train);
    dataset_free(&test);
    return 0;
}

// ----------------------------------------------------------------------------
// E2: Xavier normal vs Kaiming uniform on Wine, binary (Paper B §4.2).
// Run s of both schemes uses init seed seed+s and the same minibatch order.

typedef struct {
    const char *out, *hidden, *wine, *schemes;
    int seed, threads, epochs, batch, seeds, positive, excursion_window;
    double lr, beta1, beta2, eps, target_frac, spike_frac, excursion_factor;
} E2Args;

typedef struct {
    double epochs_to_target; // +inf if never
    double final_acc, loss_std;
    int spikes, excursions;
} E2Result;

// Per-run measures (documented in docs/mlp_sweep.md):
//  epochs_to_target: first epoch e >= 1 with train_loss[e] <= target_frac · train_loss[0]
//  loss_std:         std (population) of train_loss[1..E], Paper B's "smoothness"
//  spikes:           epochs where the loss rises by more than spike_frac · train_loss[0]
//  excursions:       steps whose grad norm exceeds excursion_factor × the median of the
//                    previous `window` steps' grad norms
static E2Result e2_measure(const RunLog *g, const E2Args *a) {
    E2Result r = {INFINITY, g->test_acc[a->epochs], 0, 0, 0};
    double l0 = g->train_loss[0];
    for (int e = 1; e <= a->epochs; e++) {
        if (g->train_loss[e] <= a->target_frac * l0) {
            r.epochs_to_target = e;
            break;
        }
    }
    double mean = 0, var = 0;
    for (int e = 1; e <= a->epochs; e++) mean += g->train_loss[e];
    mean /= a->epochs;
    for (int e = 1; e <= a->epochs; e++) var += (g->train_loss[e] - mean) * (g->train_loss[e] - mean);
    r.loss_std = sqrt(var / a->epochs);
    for (int e = 2; e <= a->epochs; e++) r.spikes += g->train_loss[e] - g->train_loss[e - 1] > a->spike_frac * l0;
    int w = a->excursion_window;
    for (long t = w; t < g->nsteps; t++) {
        double med = quantile(g->step_grad_norm + t - w, w, 0.5);
        r.excursions += g->step_grad_norm[t] > a->excursion_factor * med;
    }
    return r;
}

static void print_quartiles(const char *what, const double *v, int n) {
    double q1 = quantile(v, n, 0.25), q2 = quantile(v, n, 0.5), q3 = quantile(v, n, 0.75);
    printf("  %-18s median %-9.4g quartiles [%.4g, %.4g]\n", what, q2, q1, q3);
}

static int e2_main(int argc, char **argv) {
    E2Args a;
    Flag flags[] = {
        {"out", FLAG_STRING, &a.out, "out/e2", 0, 0, NULL, "output folder for e2_epochs.csv, e2_summary.csv", 0},
        {"wine", FLAG_STRING, &a.wine, "data/wine/wine_data.csv", 0, 0, NULL, "Wine CSV (scikit-learn's wine_data.csv format)", 0},
        {"positive-class", FLAG_INT, &a.positive, "0", 0, 61, NULL, "this class (label 1) against the rest (label 0)", 0},
        {"schemes", FLAG_STRING, &a.schemes, "xavier_normal,kaiming_uniform", 0, 0, NULL, "the two init schemes to compare", 0},
        {"seeds", FLAG_INT, &a.seeds, "50", 1, 100000, NULL, "runs per scheme", 0},
        {"target-frac", FLAG_FLOAT, &a.target_frac, "0.1", 0, 1, NULL, "target: train loss <= this × the initial loss", 0},
        {"spike-frac", FLAG_FLOAT, &a.spike_frac, "0.01", 0, 100, NULL, "a spike: the epoch loss rises by more than this × the initial loss", 0},
        {"excursion-factor", FLAG_FLOAT, &a.excursion_factor, "3", 1, 1e6, NULL, "an excursion: a step's grad norm above this × the median of the previous steps", 0},
        {"excursion-window", FLAG_INT, &a.excursion_window, "10", 1, 100000, NULL, "how many previous steps that median takes", 0},
        {"hidden", FLAG_STRING, &a.hidden, "64,32", 0, 0, NULL, "hidden layer widths", 0},
        {"epochs", FLAG_INT, &a.epochs, "100", 1, 100000, NULL, "epochs per run", 0},
        {"batch", FLAG_INT, &a.batch, "16", 1, 1000000, NULL, "minibatch size", 0},
        {"lr", FLAG_FLOAT, &a.lr, "1e-3", 0, 10, NULL, "Adam learning rate", 0},
        {"beta1", FLAG_FLOAT, &a.beta1, "0.9", 0, 0.999999, NULL, "Adam β1", 0},
        {"beta2", FLAG_FLOAT, &a.beta2, "0.999", 0, 0.999999999, NULL, "Adam β2", 0},
        {"eps", FLAG_FLOAT, &a.eps, "1e-8", 0, 1, NULL, "Adam eps", 0},
        {"seed", FLAG_INT, &a.seed, "1", 0, INT_MAX / 2, NULL, "run s uses seed + s", 0},
        {"threads", FLAG_INT, &a.threads, "0", 0, 1024, NULL, "threads, one run each (0: all cores)", 0},
    };
    int nflags = sizeof(flags) / sizeof(flags[0]);
    flags_parse(flags, nflags, argc, argv, 2, "usage: mlp_sweep e2 [flags]   (E2: Xavier normal vs Kaiming uniform on Wine)");

    InitScheme sch[2];
    {
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", a.schemes);
        int n = 0;
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            if (n == 2) usage_error("--schemes: exactly two schemes, got '%s'", a.schemes);
            sch[n++] = init_from_name(tok);
        }
        if (n != 2) usage_error("--schemes: exactly two schemes, got '%s'", a.schemes);
        if (sch[0] == INIT_NORMAL || sch[1] == INIT_NORMAL) usage_error("--schemes: 'normal' needs a σ; use e1");
    }
    TrainConfig c = {.epochs = a.epochs, .batch = a.batch, .adam = {a.lr, a.beta1, a.beta2, a.eps}, .full_train_eval = 1};
    c.nlayers = build_widths(c.width, a.hidden, 13, 2);

    Dataset train, val;
    wine_binary_split(&train, &val, a.wine, a.positive);
    c.width[0] = train.dim;
    ensure_dir(a.out);

    int nruns = 2 * a.seeds, threads = threads_or_all(a.threads);
    printf("E2: MLP ");
    print_widths(&c);
    printf(" (2 logits, softmax cross-entropy), Adam lr %g, batch %d, %d epochs, %d seeds per scheme, %d threads\n",
           a.lr, a.batch, a.epochs, a.seeds, threads);
    printf("data: %s, class %d vs rest, %d train / %d validation (i %% 5 == 4), standardised on train\n", a.wine,
           a.positive, train.n, val.n);
    fflush(stdout);
    RunLog *logs = malloc_check((size_t)nruns * sizeof(RunLog));
    for (int r = 0; r < nruns; r++) runlog_alloc(&logs[r], &c, train.n);
    double t0 = wall_seconds();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int r = 0; r < nruns; r++) {
        uint64_t s = (uint64_t)a.seed + (uint64_t)(r % a.seeds);
        train_run(&c, sch[r / a.seeds], 0, s, s + 0x9E3779B9u, &train, &val, &logs[r]);
    }
    double elapsed = wall_seconds() - t0;

    E2Result *res = malloc_check((size_t)nruns * sizeof(E2Result));
    for (int r = 0; r < nruns; r++) res[r] = e2_measure(&logs[r], &a);
    char path[4200];
    snprintf(path, sizeof(path), "%s/e2_epochs.csv", a.out);
    FILE *fe = fopen_check(path, "w");
    fprintf(fe, "init,seed,epoch,train_loss,val_acc,grad_norm\n");
    for (int r = 0; r < nruns; r++) {
        for (int e = 0; e <= c.epochs; e++) {
            fprintf(fe, "%s,%d,%d,", INIT_NAMES[sch[r / a.seeds]], a.seed + r % a.seeds, e);
            csv_num(fe, logs[r].train_loss[e]);
            fputc(',', fe);
            csv_num(fe, logs[r].test_acc[e]);
            fputc(',', fe);
            if (e > 0) csv_num(fe, logs[r].grad_norm[e]);
            fputc('\n', fe);
        }
    }
    fclose_check(fe, path);
    snprintf(path, sizeof(path), "%s/e2_summary.csv", a.out);
    FILE *fs = fopen_check(path, "w");
    fprintf(fs, "init,seed,epochs_to_target,final_val_acc,loss_std,spikes,grad_excursions\n");
    for (int r = 0; r < nruns; r++) {
        fprintf(fs, "%s,%d,", INIT_NAMES[sch[r / a.seeds]], a.seed + r % a.seeds);
        if (isfinite(res[r].epochs_to_target)) fprintf(fs, "%d", (int)res[r].epochs_to_target);
        fprintf(fs, ",%.9g,%.9g,%d,%d\n", res[r].final_acc, res[r].loss_std, res[r].spikes, res[r].excursions);
    }
    fclose_check(fs, path);

    // summary: per scheme medians and quartiles; Mann-Whitney U between the schemes.
    // Beyond docs/formats.md's per-run columns: the initial and final train loss, and the epochs to an
    // absolute target, target_frac · ln 2 (ln 2 = the loss of a 50/50 guess): a scheme that
    // starts at a higher loss has a higher "target_frac of its initial loss" to reach.
    enum { NCOL = 8 };
    int n = a.seeds;
    double *col[2][NCOL];
    double abs_target = a.target_frac * log(2.0);
    for (int k = 0; k < 2; k++) {
        for (int q = 0; q < NCOL; q++) col[k][q] = malloc_check((size_t)n * sizeof(double));
        for (int i = 0; i < n; i++) {
            E2Result *x = &res[k * n + i];
            const RunLog *g = &logs[k * n + i];
            col[k][0][i] = x->epochs_to_target;
            col[k][1][i] = x->final_acc;
            col[k][2][i] = x->loss_std;
            col[k][3][i] = x->spikes;
            col[k][4][i] = x->excursions;
            col[k][5][i] = g->train_loss[0];
            col[k][6][i] = g->train_loss[a.epochs];
            col[k][7][i] = INFINITY;
            for (int e = 1; e <= a.epochs; e++) {
                if (g->train_loss[e] <= abs_target) {
                    col[k][7][i] = e;
                    break;
                }
            }
        }
    }
    char abs_name[32];
    snprintf(abs_name, sizeof(abs_name), "epochs_to_%.3g", abs_target);
    const char *names[NCOL] = {"epochs_to_target", "final_val_acc", "loss_std", "spikes", "grad_excursions",
                               "initial_loss", "final_loss", abs_name};
    for (int k = 0; k < 2; k++) {
        int never = 0;
        double mean_acc = 0;
        for (int i = 0; i < n; i++) {
            never += isinf(col[k][0][i]);
            mean_acc += col[k][1][i];
        }
        printf("\n%s (%d runs; %d never reached %.0f%% of the initial loss; mean val acc %.4f)\n", INIT_NAMES[sch[k]], n,
               never, 100 * a.target_frac, mean_acc / n);
        for (int q = 0; q < NCOL; q++) print_quartiles(names[q], col[k][q], n);
    }
    printf("\nMann-Whitney U, two-sided (%s vs %s; never = inf, ranked last):\n", INIT_NAMES[sch[0]], INIT_NAMES[sch[1]]);
    for (int q = 0; q < NCOL; q++) {
        double u, p = mann_whitney_u(col[0][q], n, col[1][q], n, &u);
        printf("  %-18s U = %-8.1f p = %.3g\n", names[q], u, p);
    }
    printf("\nE2: %d runs in %.2f s (%d threads); wrote %s/e2_epochs.csv, %s/e2_summary.csv\n", nruns, elapsed, threads,
           a.out, a.out);
    for (int k = 0; k < 2; k++) for (int q = 0; q < NCOL; q++) free(col[k][q]);
    for (int r = 0; r < nruns; r++) runlog_free(&logs[r]);
    free(logs);
    free(res);
    dataset_free(&train);
    dataset_free(&val);
    return 0;
}

// ----------------------------------------------------------------------------

#ifndef TESTING
int main(int argc, char **argv) {
    const char *usage = "usage: mlp_sweep e1|e2 [flags]   (mlp_sweep e1 --help, mlp_sweep e2 --help)";
    if (argc < 2) usage_error("%s", usage);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        printf("%s\n  e1: σ sweep of N(0, σ²) init, ReLU MLP on MNIST (Paper B, E1)\n"
               "  e2: Xavier normal vs Kaiming uniform, ReLU MLP on Wine, binary (Paper B, E2)\n", usage);
        return 0;
    }
    if (strcmp(argv[1], "e1") == 0) return e1_main(argc, argv);
    if (strcmp(argv[1], "e2") == 0) return e2_main(argc, argv);
    usage_error("unknown experiment '%s' (e1 or e2)", argv[1]);
}
#endif
