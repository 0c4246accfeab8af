"""Tables of results: printed as text, written as Markdown."""

import attr


@attr.frozen
class Table:
    title: str
    columns: tuple
    rows: tuple
    notes: tuple = ()

    def text(self) -> str:
        widths = [
            max(len(str(cell)) for cell in column)
            for column in zip(self.columns, *self.rows, strict=True)
        ]
        lines = [self.title, "=" * len(self.title)]
        for position, row in enumerate((self.columns, *self.rows)):
            lines.append(
                "  ".join(
                    str(cell).ljust(width) if index == 0 else str(cell).rjust(width)
                    for index, (cell, width) in enumerate(zip(row, widths, strict=True))
                )
            )
            if position == 0:
                lines.append("  ".join("-" * width for width in widths))
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join([":---"] + ["---:"] * (len(self.columns) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines)


def size(count: float) -> str:
    """Bytes in decimal units, as the issue counts them (30.3 MB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return (
                f"{count / scale:.3g} {unit}"
                if count < 100 * scale
                else f"{count / scale:.0f} {unit}"
            )
    return f"{count:.0f} B"


def duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def ratio(value: float) -> str:
    if value < 0.1:
        return f"{value:.2g}x"
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def percent(value: float) -> str:
    return f"{value * 100:+.1f} %"


def count(value: float) -> str:
    return f"{value:,.0f}"
