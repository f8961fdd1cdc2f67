#!/usr/bin/env python3
"""Checks the relative links of the documentation: every link in README.md,
docs/*.md and bench/results/*.md must name a file or folder that exists, and
a `#fragment` must name a heading (GitHub's anchor for it) or an explicit
`<a id>` of the page it points to. It also checks that every page in docs/
can be reached from README.md by following links.

    python3 docs/check-links.py          # prints each problem; exit 1 if any

Links to the web (http:, https:, mailto:) are not followed. Standard library
only.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"(?<!\!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def pages():
    out = [os.path.join(ROOT, "README.md")]
    for folder in ("docs", os.path.join("bench", "results")):
        d = os.path.join(ROOT, folder)
        if os.path.isdir(d):
            out += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".md"))
    return out


def prose(text):
    """The text outside fenced code blocks and inline code, where links are links."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def slug(heading):
    """GitHub's anchor for a heading: lower case, markup and punctuation other
    than `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    return "".join(c if c.isalnum() or c in "-_" else "-" if c == " " else "" for c in text)


def anchors(path):
    found, seen = set(), {}
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


def targets(path):
    with open(path, encoding="utf-8") as f:
        text = prose(f.read())
    return LINK.findall(text) + IMAGE.findall(text)


def main():
    problems, links_of = [], {}
    for page in pages():
        rel_page = os.path.relpath(page, ROOT)
        links_of[page] = set()
        for target in targets(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path, _, fragment = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(dest):
                problems.append(f"{rel_page}: {target}: no such file or folder")
                continue
            links_of[page].add(dest)
            if fragment and dest.endswith(".md") and fragment not in anchors(dest):
                problems.append(f"{rel_page}: {target}: no heading or anchor `#{fragment}` there")
    # Every docs/ page must be reachable from the front page.
    readme = os.path.join(ROOT, "README.md")
    reached, todo = {readme}, [readme]
    while todo:
        for dest in links_of.get(todo.pop(), ()):
            if dest not in reached:
                reached.add(dest)
                todo.append(dest)
    for page in pages():
        if os.path.dirname(page) == os.path.join(ROOT, "docs") and page not in reached:
            problems.append(f"{os.path.relpath(page, ROOT)}: not reachable from README.md")
    for p in problems:
        print(p)
    checked = sum(len(targets(p)) for p in pages())
    print(f"{len(pages())} pages, {checked} links: {len(problems) or 'no'} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
