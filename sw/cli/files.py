"""Reading a container file for the commands of ``python -m sw`` (see :mod:`sw.cli`)."""

from sw.codec.container import Container, parse
from sw.io.load import HeaderScan, scan_headers
from sw.io.tensors import checked_input

#: Containers of at most this many coded symbols are decoded with the reference coder of
#: :mod:`sw.codec.rans` (about 2 Msym/s here, so at most ~70 ms) instead of the numba one, whose
#: import and cache load alone cost 0.5-1 s: ``verify`` of a small file should not pay that.
#: Both give the same symbols and the same verdict on every file (tests/test_codec.py).
REFERENCE_CODER_SYMBOLS = 1 << 17


def read_file(path) -> bytes:
    """The bytes of ``path``; :class:`OSError` saying "no such file" or "is a directory"."""
    return checked_input(path).read_bytes()


def read_with_progress(data: bytes, description: str, scan: HeaderScan = None, *,
                       keep_tensors: bool = True) -> Container:
    """Read and check a container, with a progress bar over its sections on a terminal.

    Parameters
    ----------
    data : bytes
    description : str
        The progress bar's label.
    scan : HeaderScan, optional
        :func:`sw.io.load.scan_headers` of ``data``, when the caller has it already.
    keep_tensors : bool, default True
        Build the tensors; without it every check is still made but ``tensors`` stays empty
        and memory does not grow with the symbol counts (``verify``).

    Returns
    -------
    Container

    Raises
    ------
    sw.codec.container.ContainerError
        At the first problem.
    """
    # tqdm is imported here: it is light, but only commands that read a container need it.
    from tqdm import tqdm
    scan = scan if scan is not None else scan_headers(data)
    # The reference coder only for a file whose every header was read: a damaged one may hide
    # a long section behind a field this scan gave up on.
    fast = not (scan.complete and scan.symbols <= REFERENCE_CODER_SYMBOLS)
    total = scan.section_count if scan.params is not None else None
    with tqdm(total=total, desc=description, unit="section", disable=None, leave=False) as bar:
        return parse(data, fast=fast, on_section=lambda section: bar.update(),
                     keep_symbols=keep_tensors)
