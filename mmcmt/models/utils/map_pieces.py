"""Splitting a large map into pieces that the allocator reuses.

Large allocations are served by glibc with fresh mappings whose every page
faults on first touch; a map computed a piece of a few megabytes at a time
reuses freed memory instead (measurements: docs/advanced_guides/
speed_and_memory.md).
"""

#: Bytes of one piece: well below glibc's mmap threshold (32 MB at most).
PIECE_BYTES = 8 << 20


def map_pieces(batch: int, height: int, row_bytes: int):
    """Split a ``(batch, height, ...)`` map whose rows take ``row_bytes``
    into pieces of about :data:`PIECE_BYTES`: whole images when one fits,
    otherwise bands of rows of one image. Pieces of a split are of nearly
    equal sizes; a band holds as many rows as fit, or four (each band
    computes two more rows, for a depthwise convolution's borders).

    Yields:
        tuple[slice, slice]: the images and the rows of each piece.
    """
    budget, image_bytes = PIECE_BYTES, height * row_bytes
    if image_bytes <= budget:
        images = _even_split(batch, max(1, budget // image_bytes))
        yield from ((piece, slice(0, height)) for piece in images)
        return
    for image in range(batch):
        for rows in _even_split(height, max(4, budget // row_bytes)):
            yield slice(image, image + 1), rows


def _even_split(length: int, most: int):
    """``range(length)`` as slices of at most ``most``, whose lengths differ
    by one at most."""
    count = -(-length // most)
    ends = [length * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(ends, ends[1:])]
