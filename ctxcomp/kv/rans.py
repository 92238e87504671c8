"""Range ANS over rows of integers, compiled by numba: the entropy coder of the "transform" KV codec.

rANS (Duda) with a 32-bit state and 16-bit words, the word-wise variant of Giesen's
ryg_rans. The rows are cut into chunks, each coded as a stream of its own, so
chunks are coded and decoded on several threads (the kernels release the GIL).

Each row is coded with one table of a fixed set (its index per row; -1: an all-zero
row, which costs nothing) and a shift b: a value n is coded as its coarse part
n >> b with the table, then its b low bits uniformly. A coarse part at or beyond the
table's edge codes the edge symbol, then n's 32 bits. Tables are integer frequencies
summing to 1 << PRECISION; the decoder finds a symbol by one lookup.

Decoding never reads outside its arrays: a stream that runs out, or does not end
where its chunk ends in the state the encoder started from, is reported as corrupt.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence


def numba_cache_folder(package_writable: bool, candidates: Sequence[Path], writable: Callable[[Path], bool]) -> Path | None:
    """Where numba should cache the compiled kernels: None for its own choice (next to this file) when
    that is writable, else the first candidate folder that is, else None too (no caching)."""
    if package_writable:
        return None
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if writable(folder):
            return folder
    return None


def _prepare_numba_cache() -> bool:
    """Point numba at a writable cache before it is imported: on a read-only root file system (our
    Kubernetes manifest) neither the package nor the home folder is, and numba then refuses to define
    a cached kernel. Returns whether kernels can be cached."""
    from ctxcomp.models.registry import cache_dir

    if "NUMBA_CACHE_DIR" in os.environ:
        return True
    writable = lambda folder: os.access(folder, os.W_OK)  # noqa: E731
    folder = numba_cache_folder(
        writable(Path(__file__).parent), [cache_dir() / "numba", Path(tempfile.gettempdir()) / "ctxcomp-numba"], writable
    )
    if folder is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(folder)
    return writable(Path(__file__).parent) or folder is not None


CACHE = _prepare_numba_cache()

import numba  # noqa: E402 - after the cache folder is chosen
import numpy as np  # noqa: E402

PRECISION = 14  # bits of every table's total frequency
STATE_LOW = 1 << 16  # the state lives in [STATE_LOW, STATE_LOW << 16)
CORRUPT = -1


JIT_OPTIONS = {"nogil": True, "cache": CACHE}
_JIT = {**JIT_OPTIONS, "error_model": "numpy"}
# The encoder's state arithmetic is unsigned 64-bit throughout (numba turns mixed int64 / uint64
# arithmetic into floats), hence these typed constants.
_U16, _MASK16, _LOW, _PRECISION = np.uint64(16), np.uint64(0xFFFF), np.uint64(STATE_LOW), np.uint64(PRECISION)
_NUDGE = 2.0**-17
_SLOT_MASK = (1 << PRECISION) - 1
# Helpers take and return scalars only: a kernel that hands an array to a helper on every value
# runs 2x slower here (its reference counting), so words are written and read in the loops.


def encoder_tables(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the encoder needs of tables freqs [T, A], so that pushing a symbol takes no integer
    division: starts, freqs and renormalization bounds as uint64 [T, A], and 1 / freq as float64."""
    starts = np.concatenate((np.zeros((freqs.shape[0], 1), np.int64), np.cumsum(freqs, axis=1)[:, :-1]), axis=1)
    bounds = ((STATE_LOW >> PRECISION) << 16) * freqs.astype(np.int64)
    return starts.astype(np.uint64), freqs.astype(np.uint64), bounds.astype(np.uint64), 1.0 / np.maximum(freqs, 1).astype(np.float64)


@numba.njit(**_JIT)
def _push(state, n, coarse, escaped, shift, start, freq, bound, reciprocal):
    """Push one value, split as coarse = n >> shift (escaped: beyond the table's edge), then its
    table symbol (start, freq, renormalization bound, 1 / freq). Returns (state, count, w0, w1, w2):
    the count words to write, w0 first (the words are written backwards).

    state // freq is a float product: the state is below 2**32 and freq at most 2**PRECISION, so
    its rounding error (< 2**-20) is below both the nudge and the gap to the next integer (>= 1 / freq)."""
    count, w0, w1, w2 = 0, np.uint64(0), np.uint64(0), np.uint64(0)
    if escaped:  # n's 32 bits, two uniform 16-bit pushes (each writes a word): the decoder reads the high half first
        bits32 = np.uint64(n & 0xFFFFFFFF)
        w0, state = state & _MASK16, ((state >> _U16) << _U16) | (bits32 & _MASK16)
        w1, state = state & _MASK16, ((state >> _U16) << _U16) | (bits32 >> _U16)
        count = 2
    elif shift > 0:  # the low bits, uniform
        if state >= (_LOW >> shift) << _U16:
            w0, state, count = state & _MASK16, state >> _U16, 1
        state = (state << shift) | np.uint64(n - (coarse << shift))
    if state >= bound:
        word, state = state & _MASK16, state >> _U16
        if count == 0:
            w0 = word
        elif count == 1:
            w1 = word
        else:
            w2 = word
        count += 1
    quotient = np.uint64(np.float64(state) * reciprocal + _NUDGE)
    return (quotient << _PRECISION) + (state - quotient * freq) + start, count, w0, w1, w2


@numba.njit(**_JIT)
def encode_chunk(codes, chunk, tables, shifts, widths, coder, words, interleaved=False):
    """Code chunk `chunk` of codes [chunks, R, S] (its R rows, each over S tokens) into the end
    of words; returns where the stream starts, or CORRUPT when words may be too short (a row
    can take 3 S words: the caller retries with word_bound's). tables / shifts are per row,
    chunk-major; coder is encoder_tables(freqs). interleaved: two states (see below)."""
    starts, freqs, bounds, reciprocals = coder
    state_a, state_b, at, rows = _LOW, _LOW, len(words), codes.shape[1]
    flush = 4 if interleaved else 2
    for column in range(rows - 1, -1, -1):
        row = chunk * rows + column
        table = tables[row]
        if table < 0:
            continue
        if at < 3 * codes.shape[2] + flush:
            return CORRUPT
        shift, width = np.uint64(shifts[row]), np.int64(widths[table])
        start, freq, bound, reciprocal = starts[table], freqs[table], bounds[table], reciprocals[table]
        for t in range(codes.shape[2] - 1, -1, -1):
            n = np.int64(codes[chunk, column, t])
            coarse = n >> shift
            escaped = coarse >= width or coarse <= -width
            symbol = (2 * width if coarse >= width else 0) if escaped else coarse + width
            if interleaved and t & 1:
                state_b, count, w0, w1, w2 = _push(state_b, n, coarse, escaped, shift, start[symbol], freq[symbol], bound[symbol], reciprocal[symbol])
            else:
                state_a, count, w0, w1, w2 = _push(state_a, n, coarse, escaped, shift, start[symbol], freq[symbol], bound[symbol], reciprocal[symbol])
            if count > 0:
                words[at - 1] = w0
                if count > 1:
                    words[at - 2] = w1
                    if count > 2:
                        words[at - 3] = w2
                at -= count
    if at < flush:
        return CORRUPT
    if interleaved:  # the decoder reads A's state, then B's
        words[at - 1] = state_b & _MASK16
        words[at - 2] = state_b >> _U16
        at -= 2
    words[at - 1] = state_a & _MASK16
    words[at - 2] = state_a >> _U16
    return at - 2


@numba.njit(**_JIT)
def word_bound(codes, chunk, tables, shifts, widths):
    """An upper bound on the words chunk `chunk` codes to (one per push, plus the flush)."""
    total = 2
    rows = codes.shape[1]
    for column in range(rows):
        row = chunk * rows + column
        table = tables[row]
        if table < 0:
            continue
        shift, width = shifts[row], widths[table]
        total += codes.shape[2] * (2 if shift > 0 else 1)
        for t in range(codes.shape[2]):
            coarse = np.int64(codes[chunk, column, t]) >> shift
            if coarse >= width or coarse <= -width:
                total += 2
    return total


# Interleaved (Giesen's interleaved rANS): a row's even tokens go through state A and its odd ones
# through state B, both writing into the one stream. Each state's arithmetic depends only on
# itself, so the CPU overlaps the two chains; the stream starts with A's then B's flush.
# The coders spell out one branch per state: selecting the state into one variable and writing it
# back ties the chains together again (the interleaved encoder then ran 47 ms instead of 35 on
# 11.8M values here).


@numba.njit(**_JIT)
def _pull(state, next_word, slot, symbol, start, freq, shift, width, low_mask):
    """One value of a row from its state, looked-up symbol and the stream's next three words
    (next_word: the words at `at`, or -1 past the stream's end): (value, state, words used),
    words used = CORRUPT when the stream runs out. Scalars only: see the note on helpers above."""
    w0, w1, w2 = next_word
    used = 0
    state = freq * (state >> PRECISION) + slot - start
    if state < STATE_LOW:
        if w0 < 0:
            return 0, state, CORRUPT
        state = (state << 16) | w0
        used = 1
        w0, w1 = w1, w2
    if symbol == 0 or symbol == 2 * width:  # escaped: n's 32 bits, the high half first
        if w0 < 0 or w1 < 0:
            return 0, state, CORRUPT
        high, state = state & 0xFFFF, ((state >> 16) << 16) | w0
        low, state = state & 0xFFFF, ((state >> 16) << 16) | w1
        value = (high << 16) | low
        return (value - (1 << 32) if value >= (1 << 31) else value), state, used + 2
    if shift > 0:
        low, state = state & low_mask, state >> shift
        if state < STATE_LOW:
            if w0 < 0:
                return 0, state, CORRUPT
            state = (state << 16) | w0
            used += 1
        return ((symbol - width) << shift) + low, state, used
    return symbol - width, state, used


@numba.njit(**_JIT)
def _next_words(words, at, stop):
    """The three words at `at` (-1 past `stop`), as scalars."""
    return (np.int64(words[at]) if at < stop else -1, np.int64(words[at + 1]) if at + 1 < stop else -1,
            np.int64(words[at + 2]) if at + 2 < stop else -1)


@numba.njit(**_JIT)
def decode_chunk(words, at, stop, chunk, tables, shifts, widths, starts, freqs, lookup, out, interleaved=False):
    """Decode chunk `chunk` of out [chunks, R, S] from words[at:stop], as encode_chunk wrote it with the
    same `interleaved`. Returns 0, or CORRUPT."""
    flush = 4 if interleaved else 2
    if stop - at < flush:
        return CORRUPT
    state_a = (np.int64(words[at]) << 16) | words[at + 1]
    state_b = (np.int64(words[at + 2]) << 16) | words[at + 3] if interleaved else STATE_LOW
    at += flush
    rows, length = out.shape[1], out.shape[2]
    for column in range(rows):
        row = chunk * rows + column
        table = tables[row]
        if table < 0:
            out[chunk, column, :] = 0
            continue
        shift, width = np.int64(shifts[row]), np.int64(widths[table])
        start, freq, table_lookup = starts[table], freqs[table], lookup[table]
        low_mask = (1 << shift) - 1
        for t in range(length):
            if interleaved and t & 1:
                slot = state_b & _SLOT_MASK
                symbol = np.int64(table_lookup[slot])
                value, state_b, used = _pull(state_b, _next_words(words, at, stop), slot, symbol, start[symbol], freq[symbol], shift, width, low_mask)
            else:
                slot = state_a & _SLOT_MASK
                symbol = np.int64(table_lookup[slot])
                value, state_a, used = _pull(state_a, _next_words(words, at, stop), slot, symbol, start[symbol], freq[symbol], shift, width, low_mask)
            if used == CORRUPT:
                return CORRUPT
            at += used
            out[chunk, column, t] = value
    return 0 if (state_a == STATE_LOW and state_b == STATE_LOW and at == stop) else CORRUPT
