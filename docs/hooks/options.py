"""
MkDocs hook: the configuration reference is made from the server's own options
(``piserver.tap.Options``), so it cannot drift from them. A page holding the line
``<!-- options -->`` gets the table in its place.
"""

import inspect

MARKER = "<!-- options -->"


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def option_rows():
    from piserver.tap import Options

    rows = []
    for long, short, default, description, *_ in Options.optParameters:
        name = f"`--{long}`" + (f", `-{short}`" if short else "")
        shown = "—" if default is None else f"`{default}`"
        rows.append((long, name, shown, description))
    for long, _short, description in Options.optFlags:
        rows.append((long, f"`--{long}`", "off", description))
    for attribute in dir(Options):
        if attribute.startswith("opt_"):
            long = attribute[4:].replace("_", "-")
            doc = inspect.getdoc(getattr(Options, attribute)) or ""
            rows.append((long, f"`--{long}`", "—", doc))
    return sorted(rows)


def options_table() -> str:
    lines = ["| option | default | meaning |", "|---|---|---|"]
    for _, name, default, description in option_rows():
        lines.append(f"| {name} | {_cell(default)} | {_cell(description)} |")
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        return markdown.replace(MARKER, options_table())
    return markdown
