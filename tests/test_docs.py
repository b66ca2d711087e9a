"""The repository describes itself: no words about how it was made, no dangling file references in README.md and
docs/, and docs/architecture.md names every module of dfgen/ and distill/ (and nothing that is gone).

Each check fails with the list of what is wrong (file:line and the offending text), so a failure says what to fix."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dfgen", "distill")
TOP_DIRS = ("dfgen", "distill", "benchmarks", "configs", "tests", "docs")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt"}
TEXT_NAMES = {"Makefile", "Dockerfile"}


def tracked_files() -> list[Path]:
    """The repository's files as git tracks them, or every file when git is not available."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return sorted({ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()})
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts)


def is_text_file(path: Path) -> bool:
    if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
        return True
    try:  # an extensionless script, e.g. a CI entry point
        with path.open("rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


TEXT_FILES = [p for p in tracked_files() if is_text_file(p)]
DOC_FILES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if p.is_file()]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# Words about the project's making rather than the project. Written in pieces so this file does not match itself.
_S, _I = "SP" + "EC", "iss" + "ue"
PROCESS_WORDS = [  # the longer pattern first: a text one of them matched is not reported again
    (re.compile(rf"\b{_S.lower()}(ification)?\s+sections?\s*\d", re.I), "a section of an outside document"),
    (re.compile(rf"\b{_S}\b"), "a reference to a document outside the repository"),  # upper case only: not `spec`
    (re.compile(rf"\(?\b{_I}s?\s*#?\d+", re.I), "a tracker number"),
    (re.compile(rf"\b{_I}'s\b|\({_I}\b|\b{_I} notes\b", re.I), "a tracker reference"),
    (re.compile(r"(?:^|(?<=[\s(\[]))#\d+\b(?![\w;])"), "a tracker number"),  # not a colour (color:#222)
    (re.compile(r"\b" + "ses" + r"sions?\b", re.I), "the making of the project"),
    (re.compile(r"\b" + "le" + r"nt\b", re.I), "the making of the project"),
    (re.compile(r"\b" + "hel" + r"pers?\b", re.I), "the making of the project (say what the code is)"),
    (re.compile(r"\b" + "C" + r"EO\b"), "the making of the project"),
    (re.compile(r"\b" + "tic" + r"kets?\b", re.I), "a tracker reference"),
    (re.compile(r"\bdevice\s+" + "(to" + r"ol|call)s?\b", re.I), "the tools that built the project"),
    (re.compile(r"\b" + "timeout" + r"_s\b|\bcarry\s*\["), "a call of a tool that built the project"),
]
# Legitimate uses of a matched word, removed before matching.
ALLOWED = [re.compile(r"scope=[\"']" + "ses" + r"sion[\"']")]


def process_words(text: str) -> list[tuple[int, str, str]]:
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        for allowed in ALLOWED:
            line = allowed.sub("", line)
        taken: list[range] = []
        for pattern, why in PROCESS_WORDS:
            for match in pattern.finditer(line):
                if not any(match.start() in span or match.end() - 1 in span for span in taken):
                    taken.append(range(match.start(), match.end()))
                    hits.append((number, match.group(0), why))
    return hits


def test_process_word_patterns_hit_and_miss():
    hits = lambda text: [word for _, word, _ in process_words(text)]  # noqa: E731
    assert hits(f"the format ({_S} section 3), per the {_S}") == [f"{_S} section 3", _S]
    assert hits(f"see {_I} 17, item 2 ({_I}: a bad case)") == [f"{_I} 17", f"({_I}"]
    assert hits("fixed in #" + "14") == ["#" + "14"]
    assert hits("no GPU was " + "le" + "nt to the " + "ses" + "sion") != []
    # ordinary words and code stay clean
    assert hits("inspect the specific teacher spec; importlib.util.spec_from_file_location") == []
    assert hits("color:#222;background:#fff}a{color:#555} @pytest.fixture(scope=\"" + "ses" + "sion\")") == []
    assert hits("a silent, excellent, relentless talent; no issues found") == []


@pytest.mark.parametrize("path", TEXT_FILES, ids=rel)
def test_no_words_about_the_making_of_the_project(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    hits = [f"{rel(path)}:{n}: {word!r} ({why})" for n, word, why in process_words(text)]
    assert not hits, "say what the thing is instead:\n" + "\n".join(hits)


# File references in README.md and docs/*.md: markdown links and repository paths inside backticks.
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
REPO_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP_DIRS)})/[\w.*{{}},/-]*[\w*/}}])")
TOP_FILE = re.compile(r"(?<![\w./-])([\w-]+\.md|Makefile|Dockerfile|pyproject\.toml)(?![\w/])")


def resolves(target: str, base: Path) -> bool:
    """A path exists relative to the document or the repository root; a glob or brace pattern has a match; a
    `module.attribute` reference names an existing module."""
    for root in (base, ROOT):
        if any(ch in target for ch in "*{"):
            pattern = re.sub(r"\{[^}]*\}", "*", target)
            if any(root.glob(pattern)):
                return True
        elif (root / target).exists():
            return True
        head, dot, _ = target.rpartition(".")
        if dot and (root / f"{head}.py").is_file():
            return True
    return False


def file_references(text: str) -> list[tuple[int, str]]:
    """(line, target) for every markdown link's file part and every repository path or top-level file in code."""
    line_of = lambda pos: text.count("\n", 0, pos) + 1  # noqa: E731
    refs = []
    for match in LINK.finditer(text):
        target = match.group(1).split("#", 1)[0]
        if target and not re.match(r"[a-z][a-z0-9+.-]*:", target):  # not a url, not a bare #anchor
            refs.append((line_of(match.start()), target))
    for code in CODE.finditer(text):
        for pattern in (REPO_PATH, TOP_FILE):
            for match in pattern.finditer(code.group(0)):
                refs.append((line_of(code.start() + match.start()), match.group(1).split(":", 1)[0]))
    return refs


def test_file_reference_extraction():
    text = ("see [design](design.md#choices), [site](https://example.org/x.md), [top](#top),\n"
            "`python benchmarks/published.py --out bench_out/x`, `dfgen/gpu_common.emit`, `shards/*.tar`,\n"
            "```\n configs/distill_*.yaml and README.md\n```\n`dataset.json`, `benchmarks/small_nets.py:NAME`.")
    assert file_references(text) == [(1, "design.md"), (2, "benchmarks/published.py"), (2, "dfgen/gpu_common.emit"),
                                     (4, "configs/distill_*.yaml"), (4, "README.md"),
                                     (6, "benchmarks/small_nets.py")]
    assert resolves("configs/distill_*.yaml", ROOT) and resolves("dfgen/teachers/", ROOT)
    assert resolves("dfgen/shards.build_index", ROOT) and not resolves("dfgen/no_such_module.py", ROOT)


@pytest.mark.parametrize("path", DOC_FILES, ids=rel)
def test_documents_reference_only_existing_files(path):
    missing = [f"{rel(path)}:{n}: {target}" for n, target in file_references(path.read_text(encoding="utf-8"))
               if not resolves(target, path.parent)]
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


# docs/architecture.md against the packages' modules.
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def package_modules() -> list[str]:
    return sorted(rel(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in p.parts and p.name != "__main__.py")


def unnamed_modules(doc: str, modules: list[str]) -> list[str]:
    """Modules the document does not name: by full path, or (inside a subpackage the document names) by file name;
    a package's __init__.py by its directory."""
    missing = []
    for module in modules:
        directory, _, name = module.rpartition("/")
        if name == "__init__.py":
            named = f"{directory}/" in doc or directory in PACKAGES
        else:
            named = module in doc or (directory not in PACKAGES and f"{directory}/" in doc
                                      and re.search(rf"(?<![\w/.]){re.escape(name)}\b", doc) is not None)
        if not named:
            missing.append(module)
    return missing


def stale_names(doc: str) -> list[str]:
    """Paths and module names in the document that do not exist: package paths, bare file names (outside
    `file.py:factory` patterns), and the first column of each package's "what each module owns" table."""
    stale = []
    for match in re.finditer(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})/[\w/]*?(?:\.py|/))(?![\w])", doc):
        if not (ROOT / match.group(1)).exists():
            stale.append(match.group(1))
    files = {p.name for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    for match in re.finditer(r"(?<![\w./-])(\w+\.py)\b(?!:)", doc):
        if match.group(1) not in files and match.group(1) not in stale:
            stale.append(match.group(1))
    package = None
    for line in doc.splitlines():
        heading = re.match(r"##\s+(\w+)", line)
        if heading:
            package = heading.group(1) if heading.group(1) in PACKAGES else None
        elif package and line.startswith("| `"):
            for name in re.findall(r"`([\w/]+)`", line.split("|")[1]):
                path = ROOT / package / (name if name.endswith("/") else f"{name}.py")
                if not path.exists():
                    stale.append(f"{package}/{name} (table)")
    return stale


def test_architecture_check_finds_missing_and_stale_names():
    doc = "## dfgen\n dfgen/config.py\n dfgen/teachers/\n   load.py\n| `gone` | x |\n dfgen/old.py, `file.py:f`"
    modules = ["dfgen/__init__.py", "dfgen/config.py", "dfgen/teachers/__init__.py", "dfgen/teachers/load.py",
               "dfgen/teachers/weights.py", "dfgen/shards.py", "distill/models/__init__.py"]
    assert unnamed_modules(doc, modules) == ["dfgen/teachers/weights.py", "dfgen/shards.py",
                                             "distill/models/__init__.py"]
    assert stale_names(doc) == ["dfgen/old.py", "dfgen/gone (table)"]


def test_architecture_names_every_module_and_nothing_else():
    doc = ARCHITECTURE.read_text(encoding="utf-8")
    missing, stale = unnamed_modules(doc, package_modules()), stale_names(doc)
    assert not missing and not stale, (f"docs/architecture.md misses modules: {missing}; "
                                       f"names what does not exist: {stale}")
