"""The README's code blocks, as the tests run them."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_code(heading: str) -> str:
    """The first ```python block under ``heading`` in README.md."""
    section = README.read_text().split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```\n", 1)[0] + "\n"
