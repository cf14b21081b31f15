"""Pages of the docs site that live elsewhere in the repository, written into the site at build time (mkdocs-gen-files):
README.md as the home page, the tutorial notebooks, each bundle's README and CHANGELOG.md. Links that point from
those files into the repository are rewritten to the site's pages where the site has them."""

from __future__ import annotations

import re
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "docs" / "README.md").is_file())


def _site_link(target: str, here: str) -> str:
    """A repository-relative link of a page at ``here`` (repository path) as a link of the site."""
    path, _, anchor = target.partition("#")
    repo_path = (ROOT / here).parent.joinpath(path).resolve()
    try:
        rel = repo_path.relative_to(ROOT).as_posix()
    except ValueError:
        return target
    if rel.startswith("docs/"):
        site = rel.removeprefix("docs/")
    elif rel.startswith("tutorials/") and rel.endswith(".ipynb"):
        site = rel
    elif rel.startswith("bundles/") and rel.count("/") >= 1:
        site = f"bundles/{rel.split('/')[1]}.md"
    elif rel == "README.md":
        site = "index.md"
    elif rel == "CHANGELOG.md":
        site = "changelog.md"
    else:
        return target
    return site + (f"#{anchor}" if anchor else "")


def _rewrite(text: str, here: str, site_page: str) -> str:
    depth = site_page.count("/")

    def link(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"[a-z]+:|#", target):
            return m.group(0)
        return f"{m.group(1)}({'../' * depth}{_site_link(target, here)})"

    return re.sub(r"(\]\s?)\(([^)\s]+)\)", link, text)


def _page(site_page: str, repo_path: str) -> None:
    with mkdocs_gen_files.open(site_page, "w") as f:
        f.write(_rewrite((ROOT / repo_path).read_text(), repo_path, site_page))
    mkdocs_gen_files.set_edit_path(site_page, Path("..") / repo_path)


_page("index.md", "README.md")
_page("changelog.md", "CHANGELOG.md")
for name in BUNDLES:
    _page(f"bundles/{name}.md", f"bundles/{name}/docs/README.md")
for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    with mkdocs_gen_files.open(f"tutorials/{nb.name}", "w") as f:
        f.write(nb.read_text())
