"""A known-item retrieval set from documentation that CPython installs.

Documents: the pydoc text of a fixed list of standard-library modules (what
`python3 -m pydoc MODULE` prints), each capped at --max-chars. Questions: the
one-line summaries of the modules' public functions and classes, each answered
by its own module's document; summaries that more than one module shares
("Return self==value.") are dropped, so every question has exactly one right
answer. Nobody here wrote either side. Deterministic for a given CPython.

Writes JSON {"python", "documents": [{"id", "text"}], "questions": [{"text", "doc_id"}]}.
"""
import argparse
import importlib
import inspect
import json
import pydoc
import random
import sys
import warnings

MODULES = """abc argparse array ast asyncio base64 bisect bz2 calendar cmath codecs collections
colorsys concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib
dis email enum filecmp fileinput fnmatch fractions ftplib functools gc getopt getpass gettext glob
graphlib gzip hashlib heapq hmac html html.parser http.client http.server imaplib inspect io
ipaddress itertools json keyword linecache locale logging lzma mailbox math mimetypes mmap
multiprocessing netrc numbers operator optparse os os.path pathlib pickle pkgutil platform plistlib
poplib pprint profile pstats queue quopri random re reprlib sched secrets selectors shelve shlex
shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string struct subprocess
sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit token tokenize trace
traceback tracemalloc types typing unicodedata unittest urllib.parse urllib.request uuid warnings
wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zlib zoneinfo""".split()


def summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().split("\n")[0].strip()
    return line if len(line.split()) >= 4 and len(line) <= 200 else ""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--max-chars", type=int, default=12000)
    p.add_argument("--per-module", type=int, default=6)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    documents, candidates = [], []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        text = pydoc.render_doc(mod, renderer=pydoc.plaintext)[: args.max_chars]
        documents.append({"id": name, "text": text})
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
                s = summary(obj)
                if s:
                    candidates.append((s, name))
    counts = {}
    for s, _ in candidates:
        counts[s] = counts.get(s, 0) + 1
    by_module = {}
    for s, m in candidates:
        if counts[s] == 1:
            by_module.setdefault(m, []).append(s)
    rng = random.Random(7)
    questions = []
    for m in sorted(by_module):
        picks = by_module[m]
        rng.shuffle(picks)
        questions.extend({"text": s, "doc_id": m} for s in picks[: args.per_module])
    json.dump({"python": sys.version.split()[0], "documents": documents, "questions": questions},
              open(args.out, "w"), ensure_ascii=False)
    print(f"{len(documents)} documents, {sum(len(d['text']) for d in documents)} characters, "
          f"{len(questions)} questions -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
