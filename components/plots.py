"""Charts as PNG bytes, drawn with matplotlib: for report.html and TensorBoard's Images tab.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so no global state or GUI backend is
involved and a chart can be drawn from any thread.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image, ImageDraw, ImageFont

MISTAKE_COLOR = "#b3261e"
TRAIN_COLOR = "#1f77b4"
VALIDATION_COLOR = "#ff7f0e"


def to_png(figure: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    # Light compression: the default level spent half of the report stage in zlib for ~20 % smaller files.
    figure.savefig(buffer, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def thumbnail(image: np.ndarray) -> bytes:
    """One image [H, W, C] (uint8) as a PNG at its own size (the page scales it up, pixelated)."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG, from its header."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def image_grid(images: np.ndarray, titles: Sequence[str], columns: int = 4, title_color: str = "black",
               cell_inches: float = 1.3, fontsize: float = 9) -> bytes:
    """Images [N, H, W, C] (uint8) in a grid, each with its title above it.

    The images are tiled into one array and drawn once: one matplotlib axes per image would take
    about ten times as long. Few columns by default: TensorBoard scales an image down to its card.
    """
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    height, width, channels = images.shape[1:]
    lines = max((title.count("\n") + 1 for title in titles), default=1)
    gap_x = max(1, width // 8)
    inches_per_pixel = cell_inches / (width + gap_x)
    gap_y = int(np.ceil((fontsize * 1.3 * lines / 72 + 0.06) / inches_per_pixel))  # room for the title
    cell_w, cell_h = width + gap_x, height + gap_y
    mosaic = np.full((rows * cell_h, columns * cell_w, channels), 255, np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * cell_h + gap_y, (index % columns) * cell_w
        mosaic[top:top + height, left:left + width] = image
    figure = Figure(figsize=(columns * cell_inches, rows * cell_h * inches_per_pixel))
    axes = figure.add_axes((0, 0, 1, 1))
    _show_image(axes, mosaic)
    axes.axis("off")
    for index, title in enumerate(titles):
        x = (index % columns) * cell_w + width / 2
        y = (index // columns) * cell_h + gap_y - 1
        axes.text(x, y, title, ha="center", va="bottom", fontsize=fontsize, color=title_color, linespacing=1.1,
                  parse_math=False)
    return to_png(figure)


def _show_image(axes, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axes.imshow(image, interpolation="nearest")


def confusion_heatmap(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    return to_png(confusion_figure(matrix, class_names, title))


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """`confusion_heatmap`'s figure: counts sized to fill their cells, up to 30 classes (more: colour only)."""
    matrix = np.asarray(matrix)
    label_size = 14 if len(class_names) <= 12 else 9  # a page shows it 400-600 pixels wide, a phone's half size
    # Room for the cells and the longest class name (a character is about 0.6 of the font size wide).
    label_inches = 0.6 * label_size / 72 * max((len(name) for name in class_names), default=1)
    size = min(16.0, 1.5 + 0.55 * len(class_names) + label_inches)  # 47 classes: 16 inches, not 28
    figure = Figure(figsize=(size, size), layout="tight")
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    # parse_math=False: a class name with `$` is a name, not a formula (mathtext fails on some).
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=label_size, parse_math=False)
    axes.set_yticks(ticks, class_names, fontsize=label_size, parse_math=False)
    axes.set_xlabel("predicted", fontsize=label_size)
    axes.set_ylabel("true", fontsize=label_size)
    if title:
        axes.set_title(title, parse_math=False)
    if len(class_names) <= 30:
        figure.draw_without_rendering()  # lays the figure out: the cells get their final size
        fontsize = cell_fontsize(axes.get_window_extent().width / len(class_names) * 72 / figure.dpi,
                                 len(str(int(matrix.max(initial=0)))))
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                axes.text(column, row, f"{count}", ha="center", va="center", fontsize=fontsize,
                          color="white" if count > threshold else "black")
    return figure


def cell_fontsize(cell_points: float, num_digits: int) -> float:
    """The font size (points) at which the widest count fills about 70 % of a square cell, at most 20.

    A digit is about 0.6 of the font size wide in matplotlib's default font (DejaVu Sans); one digit is
    sized as two, so a lone digit does not fill its cell, and no count is taller than half the cell.
    """
    return min(20.0, 0.7 * cell_points / (0.6 * max(2, num_digits)), 0.5 * cell_points)


def training_curves(history: dict[str, list[float]], kept_epoch: int) -> list[bytes]:
    """One chart each for accuracy and loss (train and validation) and the learning rate, kept epoch marked."""
    panels = [("accuracy", "accuracy"), ("loss", "loss")] + ([("learning rate", None)]
                                                               if history.get("learning_rate") else [])
    charts = []
    for title, key in panels:
        figure = Figure(figsize=(4.2, 3.0), layout="tight")
        axes = figure.add_subplot()
        if key is None:
            _plot(axes, history["learning_rate"], "at the end of the epoch", TRAIN_COLOR)
        else:
            _plot(axes, history.get(key, []), "train", TRAIN_COLOR)
            _plot(axes, history.get(f"val_{key}", []), "validation", VALIDATION_COLOR)
        axes.axvline(kept_epoch, color="gray", linestyle="--", linewidth=1, label=f"kept (epoch {kept_epoch})")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        charts.append(to_png(figure))
    return charts


def _plot(axes, values: Sequence[float], label: str, color: str) -> None:
    if values:
        axes.plot(range(1, len(values) + 1), values, label=label, color=color, marker="." if len(values) < 30 else None)


def class_balance(counts: dict[str, Sequence[int]], class_names: Sequence[str]) -> bytes:
    """Images per class in each split, as grouped horizontal bars."""
    return to_png(class_balance_figure(counts, class_names))


def class_balance_figure(counts: dict[str, Sequence[int]], class_names: Sequence[str]) -> Figure:
    """`class_balance`'s figure: one bar per class and split, the legend above the axes."""
    figure = Figure(figsize=(7, 1.2 + 0.12 * len(class_names) * max(1, len(counts))), layout="tight")
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(counts))
    positions = np.arange(len(class_names))
    for index, (split, values) in enumerate(counts.items()):
        axes.barh(positions + index * height, values, height=height, label=f"{split} ({sum(values):,})")
    axes.set_yticks(positions + height * (len(counts) - 1) / 2, class_names, fontsize=10, parse_math=False)
    axes.invert_yaxis()
    axes.set_xlabel("images")
    # Above the bars, in one row: inside the axes it covered the longest bars.
    axes.legend(fontsize=11, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=len(counts), frameon=False,
                borderaxespad=0.3)
    axes.grid(axis="x", alpha=0.3)
    return figure


def quick_confusion_image(matrix: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    """The confusion matrix as a small labelled heatmap, drawn with Pillow in a few milliseconds.

    For TensorBoard's image after every epoch: a matplotlib figure takes 0.1-0.2 s, longer than a
    whole epoch on the digits data. The report's heatmap (`confusion_heatmap`) is matplotlib's.
    """
    matrix = np.asarray(matrix)
    font = ImageFont.load_default(size=12)
    count = len(class_names)
    cell = max(22, 9 * len(str(int(matrix.max(initial=0)))) + 6)
    labels = [f"{index} {name}" for index, name in enumerate(class_names)]
    label_width = int(max((font.getlength(label) for label in labels), default=0)) + 10
    top = 56
    image = Image.new("RGB", (label_width + count * cell + 8, top + count * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black", font=font)
    draw.text((4, 22), "rows: true class; columns: predicted class", fill="#5f6368", font=font)
    for column in range(count):
        draw.text((label_width + column * cell + cell / 2, top - 4), str(column), fill="#5f6368", font=font,
                  anchor="mb")
    peak = max(1, int(matrix.max(initial=0)))
    for row in range(count):
        draw.text((4, top + row * cell + cell / 2), labels[row], fill="black", font=font, anchor="lm")
        for column in range(count):
            value = int(matrix[row, column])
            shade = 1 - value / peak
            fill = (int(30 + 225 * shade), int(90 + 165 * shade), int(180 + 75 * shade))
            box = (label_width + column * cell, top + row * cell)
            draw.rectangle((*box, box[0] + cell - 1, box[1] + cell - 1), fill=fill)
            if value:
                draw.text((box[0] + cell / 2, box[1] + cell / 2), str(value), font=font, anchor="mm",
                          fill="white" if shade < 0.5 else "black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


BEST_COLOR = "#137333"  # the page's "good" green
PRUNED_COLOR = "#9aa0a6"
MAX_NUMBERED_TRIALS = 30  # more trials than this are drawn without their numbers, which would overlap


def tuning_trials(trials: Sequence[dict], best_trial: int | None, budget_seconds: float | None = None) -> bytes:
    """Each trial's validation accuracy per epoch against seconds into the search (`tuning_trials_figure`)."""
    return to_png(tuning_trials_figure(trials, best_trial, budget_seconds))


def tuning_trials_figure(trials: Sequence[dict], best_trial: int | None, budget_seconds: float | None = None
                         ) -> Figure:
    """`tuning_trials`' figure: finished trials solid, pruned ones grey and dashed with a cross where they
    stopped, the best one green with a star at its score, each numbered (up to 30); the budget's end as a
    vertical line.

    `trials` as in `tuning.json`, whose times are on the budget's clock: seconds since the stage started,
    its start-up included. A trial's epochs are spread evenly between its start and its end: the record
    times the trial, not its epochs. Trials without epochs (failed ones) are not drawn.
    """
    figure = Figure(figsize=(8.4, 3.6), layout="tight")
    axes = figure.add_subplot()
    for trial in trials:
        accuracies = trial["val_accuracy_by_epoch"]
        if not accuracies or trial["started"] is None or trial["ended"] is None:
            continue
        step = (trial["ended"] - trial["started"]) / len(accuracies)
        seconds = [trial["started"] + step * (epoch + 1) for epoch in range(len(accuracies))]
        _draw_trial(axes, trial, seconds, accuracies, trial["number"] == best_trial)
        if len(trials) <= MAX_NUMBERED_TRIALS:
            axes.annotate(str(trial["number"]), (seconds[0], accuracies[0]), xytext=(-3, 4),
                          textcoords="offset points", ha="right", fontsize=8, color="#5f6368")
    if budget_seconds:
        axes.axvline(budget_seconds, color=PRUNED_COLOR, linewidth=1, linestyle=":", label="the budget's end")
    ended = max((trial["ended"] or 0 for trial in trials), default=0)
    axes.set_xlim(0, max(ended, budget_seconds or 0) * 1.03 or 1)
    axes.set_xlabel("seconds into the search (its start-up included)")
    axes.set_ylabel("validation accuracy")
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per kind of trial
    axes.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    return figure


def _draw_trial(axes, trial: dict, seconds: list[float], accuracies: Sequence[float], best: bool) -> None:
    """One trial's line, and a marker at its score: a star for the best, a cross where a pruned trial stopped."""
    if best:
        axes.plot(seconds, accuracies, color=BEST_COLOR, linewidth=2.2, marker=".", zorder=3)
        # The trial's score is its kept epoch's accuracy: the last epoch with that accuracy.
        kept = max((index for index, accuracy in enumerate(accuracies) if accuracy == trial["value"]),
                   default=len(accuracies) - 1)
        axes.plot(seconds[kept], accuracies[kept], marker="*", markersize=15, color=BEST_COLOR, linestyle="none",
                  zorder=4, label=f"best: trial {trial['number']}, {trial['value']:.2%}")
    elif trial["state"] == "pruned":
        axes.plot(seconds, accuracies, color=PRUNED_COLOR, linestyle="--", linewidth=1, marker=".")
        axes.plot(seconds[-1], accuracies[-1], color=PRUNED_COLOR, marker="x", markersize=7, linestyle="none",
                  label="stopped early (pruned)")
    else:
        axes.plot(seconds, accuracies, color=TRAIN_COLOR, linewidth=1.2, marker=".", label="ran to the end")


def setting_importance(importance: dict[str, float]) -> bytes:
    """Optuna's importance of each setting as horizontal bars (`setting_importance_figure`)."""
    return to_png(setting_importance_figure(importance))


def setting_importance_figure(importance: dict[str, float]) -> Figure:
    """`setting_importance`'s figure: one bar per setting, the most important on top, each with its percentage."""
    keys = sorted(importance, key=importance.get, reverse=True)
    figure = Figure(figsize=(7, 0.9 + 0.32 * len(keys)), layout="tight")
    axes = figure.add_subplot()
    positions = np.arange(len(keys))
    values = [importance[key] for key in keys]
    axes.barh(positions, values, color=TRAIN_COLOR, height=0.6)
    axes.set_yticks(positions, keys, fontsize=10, parse_math=False)
    axes.invert_yaxis()
    for position, value in zip(positions, values):
        axes.text(value, position, f" {value:.0%}", va="center", fontsize=9)
    axes.set_xlim(0, max(values, default=0) * 1.15 or 1)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    axes.set_xlabel("share of the differences in validation accuracy between trials")
    axes.grid(axis="x", alpha=0.3)
    return figure
