"""The README and docs/ stay true to the tree: every path they name exists, every link and
anchor resolves, the README keeps the newcomer's two commands at the top and links every page
of docs/, and the TSan suite list is the same in the Makefile and in CMakePresets.json.

A path is checked when it is written in backticks or as a link target and looks like one of
the repository's paths: it has a '/', and either its first component is an entry at the top
of the repository or it ends in a source or document extension. Placeholders (`<data_dir>`),
URLs, absolute paths (they name the machine's files, not ours) and the generated build
directories are left alone. `registry/registry.*` and other globs must match at least one file.

Run: python3 -m unittest -v test_docs   (in tests/python; needs no daemon)
"""

import glob
import json
import os
import re
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# The README is the newcomer's first read: the hook of the project wants both commands in
# the first 40 lines, and reference material belongs in docs/, not here.
README_COMMANDS = ("make run", "make test")
README_COMMANDS_WITHIN = 40
README_MAX_LINES = 230

# Paths the docs may name before they exist (none today; kept for work that lands in steps).
PENDING: set = set()

# Paths the docs name on purpose although they are never in the repository: the user makes
# them (CURVE keys are secrets and never committed).
NOT_IN_REPO_PREFIXES = ("docker/secrets/",)

# Generated at build or run time (all in .gitignore).
GENERATED_FIRST = re.compile(r"^(build[\w-]*|data)$")

SOURCE_EXTENSIONS = (".c", ".h", ".md", ".py", ".sh", ".json", ".yaml", ".txt", ".in",
                     ".map", ".supp", ".dict", ".*")

NOT_A_PATH = ("://", "<", ">", "$", "{", "}", "=", "~", "@", "\\", '"', "'", "|", "(", ")")


def doc_files():
    """README.md and every docs/*.md, as paths relative to the root."""
    docs = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return ["README.md"] + docs


def read(relpath):
    with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
        return f.read()


def strip_fences(text):
    """The text without its ``` blocks (example YAML and C name the user's files)."""
    out = []
    fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def inline_code(text):
    """Every `code span` of the text, whitespace runs made single spaces. Spans may wrap
    across lines, so the whole text is matched at once."""
    return [" ".join(m.group(1).split()) for m in re.finditer(r"`([^`]+)`", strip_fences(text))]


def link_targets(text):
    """The targets of the text's markdown links [..](target), outside code."""
    no_code = re.sub(r"`[^`]+`", "", strip_fences(text))
    return [m.group(1) for m in re.finditer(r"\]\(([^)\s]+)\)", no_code)]


def top_level_entries():
    return {e for e in os.listdir(ROOT) if not GENERATED_FIRST.match(e)}


def path_candidates(span, top):
    """The words of a code span that name a path of the repository (relative to the root)."""
    found = []
    for word in span.split(" "):
        word = word.strip(",;:")
        if word.endswith(".") and not word.endswith(".*"):
            word = word.rstrip(".")
        if "/" not in word or any(s in word for s in NOT_A_PATH):
            continue
        if word.startswith(("/", "-", "./", "../")):
            continue
        first = word.split("/", 1)[0]
        if GENERATED_FIRST.match(first):
            continue
        if first in top or word.rstrip("/").endswith(SOURCE_EXTENSIONS):
            found.append(word)
    return found


def path_exists(relpath):
    full = os.path.join(ROOT, relpath)
    if "*" in relpath:
        return bool(glob.glob(full))
    return os.path.exists(full)


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(relpath):
    return {github_anchor(m.group(1))
            for m in re.finditer(r"^#{1,6} (.+)$", strip_fences(read(relpath)), re.M)}


def check_doc(relpath, text, top):
    """(missing, pending) for one document: the paths and links that do not resolve, and the
    pending ones (see PENDING) that do not exist yet. Each entry is 'doc: what'."""
    missing, pending = [], []
    for span in inline_code(text):
        for path in path_candidates(span, top):
            if path.startswith(NOT_IN_REPO_PREFIXES) or path_exists(path):
                continue
            (pending if path in PENDING else missing).append(f"{relpath}: `{path}`")
    base = os.path.dirname(relpath)
    for target in link_targets(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(base, path)) if path else relpath
        if linked.startswith(".."):
            missing.append(f"{relpath}: link ({target}) leaves the repository")
            continue
        if not path_exists(linked):
            missing.append(f"{relpath}: link ({target})")
        elif anchor and linked.endswith(".md") and anchor not in anchors_of(linked):
            missing.append(f"{relpath}: link ({target}): no heading #{anchor} in {linked}")
    return missing, pending


class DocPathsTest(unittest.TestCase):
    def test_every_named_path_exists(self):
        top = top_level_entries()
        missing = []
        for doc in doc_files():
            missing += check_doc(doc, read(doc), top)[0]
        self.assertEqual(missing, [], "paths or links in the docs that do not exist:\n  " +
                         "\n  ".join(missing))

    def test_pending_paths_of_parallel_branches(self):
        top = top_level_entries()
        pending = []
        for doc in doc_files():
            pending += check_doc(doc, read(doc), top)[1]
        if pending:
            self.skipTest("not merged yet: " + ", ".join(sorted(set(pending))))

    def test_checker_sees_paths_and_reports_missing_ones(self):
        # The checker itself: it must find the README's module paths (an extractor that finds
        # nothing would pass everything) and flag what does not exist.
        top = top_level_entries()
        readme_paths = {p for span in inline_code(read("README.md"))
                        for p in path_candidates(span, top)}
        for known in ("service/main.c", "service/front.*", "service/writer.*",
                      "service/store.*", "proto/PROTOCOL.md"):
            self.assertIn(known, readme_paths)
        sample = ("See `service/no_such_module.c`, `tests/nothing/`, [x](docs/nothing.md),\n"
                  "[y](README.md#no-such-heading) and `service/none.*`; not `openai/gpt-4o`,\n"
                  "`<data_dir>/x.yaml`, `build/client/pmctl`, `/etc/passwd` or `tcp://a/b`.\n"
                  "```\nservice/inside_a_fence.c\n```\n")
        missing, _ = check_doc("README.md", sample, top)
        self.assertEqual(len(missing), 5, missing)
        for needle in ("no_such_module.c", "tests/nothing/", "docs/nothing.md",
                       "#no-such-heading", "service/none.*"):
            self.assertTrue(any(needle in m for m in missing), (needle, missing))

    def test_github_anchor(self):
        self.assertEqual(github_anchor("Life of a request: where to start reading"),
                         "life-of-a-request-where-to-start-reading")
        self.assertEqual(github_anchor("Turning CURVE on"), "turning-curve-on")


class ReadmeTest(unittest.TestCase):
    def test_two_commands_at_the_top(self):
        head = read("README.md").split("\n")[:README_COMMANDS_WITHIN]
        for command in README_COMMANDS:
            self.assertTrue(any(line.strip().startswith(command) for line in head),
                            f"`{command}` not in the README's first {README_COMMANDS_WITHIN} lines")

    def test_short_enough_for_a_first_read(self):
        lines = read("README.md").count("\n")
        self.assertLessEqual(lines, README_MAX_LINES,
                             "README.md grows: move reference material into docs/")

    def test_links_every_page_of_docs(self):
        linked = {os.path.normpath(t.partition("#")[0]) for t in link_targets(read("README.md"))}
        orphans = [d for d in doc_files()[1:] if d not in linked]
        self.assertEqual(orphans, [], "pages of docs/ that the README does not link")


class TsanListTest(unittest.TestCase):
    def test_makefile_and_preset_run_the_same_suites(self):
        makefile = re.search(r"^TSAN_TESTS = (\S+?)\$\$$", read("Makefile"), re.M)
        self.assertIsNotNone(makefile, "TSAN_TESTS not found in the Makefile")
        presets = json.loads(read("CMakePresets.json"))
        tsan = [p for p in presets.get("testPresets", []) if p.get("name") == "tsan"]
        self.assertEqual(len(tsan), 1, "no tsan test preset")
        self.assertEqual(tsan[0]["filter"]["include"]["name"], makefile.group(1) + "$")


if __name__ == "__main__":
    unittest.main()
