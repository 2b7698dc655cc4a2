"""The model card: what an exported version is, how well it does, where it fails, how to make it again.

Its sections follow Google's Model Card Toolkit schema (model details, model parameters, quantitative
analysis, considerations) as Markdown headings, with a last one on reproducing the run. The toolkit
itself is unmaintained, so the card is rendered from `templates/model_card.md.j2` with Jinja2, whose
StrictUndefined turns a field the template names but the card lacks into an error, not a blank.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from components.blessing import Blessing
from components.file_scores import FileScore
from components.findings import class_results, confusions, headline, worst_classes

MODEL_CARD_FILE = "model_card.md"  # in every exported version folder, beside metadata.json

# Characters that change how inline Markdown renders; `_` only at a word's edge (GitHub ignores it inside).
_MARKDOWN_SPECIAL = re.compile(r"[\\`*|<\[\]~&]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


@dataclass(frozen=True)
class ModelCard:
    """Everything the card says about one export, except its version number (known only at the rename)."""

    model_name: str
    exported_at: str  # when export wrote the card, e.g. "2025-05-01 12:00:00 UTC"
    run_id: str
    image_shape: tuple[int, int, int]  # height, width, channels
    class_names: tuple[str, ...]  # in the order of the output's probabilities
    num_parameters: int
    onnx_opset: int
    exported_with: dict[str, str]  # library -> version of those that wrote the SavedModel and ONNX model
    trained_precision: str
    parity_max_abs_diff: float
    num_parity_examples: int  # test images on which Keras, both signatures and ONNX Runtime agreed
    num_examples: dict[str, int]  # images per split
    data_fingerprint: str
    metrics: dict[str, Any]  # evaluate's metrics.json
    blessing: Blessing  # evaluate's decision (blessing.json)
    data_warnings: tuple[str, ...]  # validate's warnings: data problems that did not stop the run
    command: str  # the command line of the run; "" when export was called outside the orchestrator
    reproduction: dict[str, Any] | None  # pipeline/reproduction.py's record; None outside the orchestrator
    network: str = "cnn"  # model.builder: cnn, a backbone, or the user's MODULE:FUNCTION
    starting_weights: str = "random"  # where training started: random, imagenet, a weights file, an export
    parent: str = ""  # the export warm-started from (model.init), NAME/VERSION; "" = none
    trainable_parameters: int = 0  # trained in the last phase of training
    frozen_parameters: int = 0  # never trained in it: a frozen body's, batch norms' statistics
    files: tuple[FileScore, ...] = ()  # each file a consumer can load, scored by export
    int8: dict[str, Any] | None = None  # export.int8's gate; None = not asked for
    left_out: dict[str, str] = field(default_factory=dict)  # files not published, each with why


def render_model_card(card: ModelCard, version: int) -> str:
    """The card as GitHub-flavoured Markdown.

    Args:
        card: what the card says.
        version: the version folder's number.

    Returns:
        The Markdown text.

    Raises:
        jinja2.UndefinedError: the template names a field that `card` (or one of its dicts) lacks.
    """
    return _environment().get_template("model_card.md.j2").render(
        card=card,
        version=version,
        classes=class_results(card.metrics),
        worst=worst_classes(card.metrics),
        confusion=next(iter(confusions(card.metrics)), None),
        headline=headline(card.metrics),
        fence=_code_fence(card.command),
    )


def write_model_card(version_dir: Path, card: ModelCard, version: int) -> Path:
    """Write `version_dir/model_card.md` and return its path.

    Args:
        version_dir: the (staging) version folder.
        card: what the card says.
        version: the number the folder is about to be published under.
    """
    path = version_dir / MODEL_CARD_FILE
    path.write_text(render_model_card(card, version))
    return path


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("components", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML: text is escaped for Markdown by the `md` filter instead
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # int() and float() of a missing field raise StrictUndefined's error; a format spec would not.
    environment.filters.update(md=escape_markdown, count=lambda number: f"{int(number):,}",
                               decimal=lambda number: f"{float(number):.4f}", kib=kibibytes,
                               version_name=lambda path: f"{Path(path).parent.name}/{Path(path).name}")
    return environment


def kibibytes(num_bytes: int) -> str:
    """`1,234.5 KiB`: file sizes, in the unit small models are read in."""
    return f"{int(num_bytes) / 1024:,.1f} KiB"


def escape_markdown(text: str) -> str:
    """`text` with the characters that would turn into emphasis, code, links, HTML or table cells escaped."""
    one_line = re.sub(r"[\r\n]+", " ", str(text))  # a line break would end a table row
    return _MARKDOWN_SPECIAL.sub(lambda match: "\\" + match.group(), one_line)


def _code_fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in `text`, so the code block cannot end early."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    return "`" * max(3, longest + 1)
