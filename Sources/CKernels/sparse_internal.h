/* Private to sparse.c and avx2_sparse.c: where a row's stored data starts in each sparse layout
   (tern_sparse.h, docs/SPARSE_FORMATS.md). */
#ifndef TERN_SPARSE_INTERNAL_H
#define TERN_SPARSE_INTERNAL_H

#include <string.h>
#include "include/tern_sparse.h"

/* First byte of row r in the values section; bb = bytes per stored block (group layout only). */
static inline const uint8_t *tern_sparse_row_values(const tern_sparse_matrix *w, int64_t r, int bb) {
    switch (w->layout) {
    case TERN_SPARSE_GROUP: return w->values + (size_t)(r * w->kept) * (size_t)bb;
    case TERN_SPARSE_NM24: return w->values + (size_t)(r * (w->columns / 32)) * TERN_SPARSE_NM24_CHUNK_BYTES;
    default: {
        uint64_t off;
        memcpy(&off, w->index + 8 * r, 8);
        return w->values + off;
    }
    }
}

#endif
