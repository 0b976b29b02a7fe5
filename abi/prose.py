"""English prose: the offline stand-in for WikiText-2 (backbone updates, T5 pre-training).

No package ships WikiText-2, but the gensim 4.4.0 wheel carries a shortened dump of the
English Wikipedia (106 real articles, about 3.1 MB of text once the markup is stripped;
CC BY-SA). gensim is a pinned dependency, so the file is on disk after ``make setup``; its
sha256 is checked so that another gensim build cannot silently change the corpus. Markup is
removed with gensim's own ``filter_wiki``; redirect pages are skipped. Articles become
:class:`abi.data.CorpusFile` records, so the file-level split and token streams of
:mod:`abi.data` apply unchanged (the split unit is the article).
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from abi.data import Corpus, CorpusFile

WIKI_PACKAGE = "gensim==4.4.0"
WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
WIKI_LICENSE = "CC BY-SA 3.0 (Wikipedia text)"
_QUOTE_MARKUP = re.compile("'{2,}")
MIN_ARTICLE_CHARS = 200  # stubs and disambiguation leftovers carry no prose


class ProseCorpusError(RuntimeError):
    """The prose source is missing or differs from the pinned file."""


def wiki_dump_path() -> Path:
    """The Wikipedia dump inside the installed gensim package (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ProseCorpusError(f"{WIKI_PACKAGE} is not installed; run `make setup` (or `pip install {WIKI_PACKAGE}`).")
    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
    if not path.is_file():
        raise ProseCorpusError(f"{path} is missing from the installed gensim; reinstall {WIKI_PACKAGE}.")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def load_prose_corpus() -> Corpus:
    """The Wikipedia articles as a corpus of one "file" per article, pinned by hash."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = wiki_dump_path()
    raw = path.read_bytes()
    digest = _sha256(raw)
    if digest != WIKI_SHA256:
        raise ProseCorpusError(
            f"{path} has sha256 {digest}, expected {WIKI_SHA256}: another gensim build is installed; "
            f"reinstall the pinned {WIKI_PACKAGE}."
        )
    files = []
    with bz2.open(path) as stream:
        for title, markup, page_id in extract_pages(stream):
            if markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            plain = _QUOTE_MARKUP.sub("", filter_wiki(markup))  # filter_wiki keeps the bold/italic quotes
            text = "\n".join(line.strip() for line in plain.splitlines() if line.strip())
            if len(text) < MIN_ARTICLE_CHARS:
                continue
            name = f"enwiki/{int(page_id):06d}-{title.replace('/', '_')}"
            files.append(CorpusFile(name, "enwiki", text, _sha256(text.encode())))
    files.sort(key=lambda f: f.path)
    lines = "".join(f"{f.path}\0{f.sha256}\n" for f in files)
    identity = {
        "name": "enwiki-gensim-test",
        "source": f"{WIKI_PACKAGE}: gensim/{WIKI_FILE}",
        "source_sha256": digest,
        "license": WIKI_LICENSE,
        "n_files": len(files),
        "n_chars": sum(len(f.text) for f in files),
        "sha256": _sha256(lines.encode()),
    }
    return Corpus(files, identity)
