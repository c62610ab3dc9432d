"""Reports of explanations: self-contained HTML pages, PNGs (matplotlib, the `tasks` extra) and JSON.

write_report(out, text, explanations, maps) writes what it is given into one folder. The attributions:
explanation.json, explanation.html (the words coloured by their
attribution, red for, blue against, one row per method) and METHOD.png (a bar per word).
The attention maps: attention.json, attention.html (one page: pick a kind, layer and head; the map
is drawn in the browser from the weights inside the page) and KIND-layerL-headH.png with the tokens on the axes.
Both write their folder whole at the end (lmforge.outputs.staged).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from lmforge.explain.attention import AttentionMaps
from lmforge.explain.attribution import Explanation
from lmforge.extras import require
from lmforge.outputs import staged

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}
.w{padding:.15em .25em;margin:.1em;border-radius:.25em;display:inline-block}
table{border-collapse:collapse}td{width:1.8em;height:1.8em;text-align:center;font-size:.7em}
th{font-weight:normal;font-size:.8em;padding:0 .3em}th.k{writing-mode:vertical-rl}"""


def _pyplot():
    matplotlib = require("matplotlib", extra="tasks", feature="explanation plots")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", extra="tasks", feature="explanation plots")


def _colour(value: float, scale: float) -> str:
    a = 0.0 if scale == 0 else min(abs(value) / scale, 1.0)
    return f"rgba(220,40,40,{a:.3f})" if value >= 0 else f"rgba(40,90,220,{a:.3f})"


def explanation_html(explanations: list[Explanation], text: str) -> str:
    rows = []
    for e in explanations:
        scale = max((abs(a) for a in e.attributions), default=0.0)
        words = " ".join(
            f'<span class="w" style="background:{_colour(a, scale)}" title="{a:+.4f}">{html.escape(w)}</span>'
            for w, a in zip(e.tokens, e.attributions)
        )
        answer = e.prediction.get("label", e.prediction.get("token"))
        delta = "" if e.delta is None else f", completeness error (delta) {e.delta:+.2e}"
        rows.append(
            f"<h2>{'Integrated Gradients' if e.method == 'ig' else 'Shapley values'}</h2>"
            f"<p>prediction <b>{html.escape(str(answer))}</b> ({e.prediction['score']:.3f}); "
            f"explained: the probability of <b>{html.escape(e.target)}</b>{delta}</p><p>{words}</p>"
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>lmforge explain</title><style>{STYLE}</style>"
        f"</head><body><h1>Why the model decided</h1><p>{html.escape(text)}</p>{''.join(rows)}"
        "<p>Red words raised the explained probability, blue ones lowered it; the stronger the colour, the larger "
        "the share.</p></body></html>"
    )


def attribution_png(e: Explanation, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(e.tokens) + 1), 3.2))
    colours = ["#dc2828" if a >= 0 else "#285adc" for a in e.attributions]
    ax.bar(range(len(e.tokens)), e.attributions, color=colours)
    ax.set_xticks(range(len(e.tokens)), e.tokens, rotation=45, ha="right")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title(f"{e.method}: attribution to p({e.target})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    out: str | os.PathLike,
    text: str,
    explanations: list[Explanation] = (),
    maps: AttentionMaps | None = None,
) -> Path:
    """The attribution files and/or the attention files in the folder `out` (checked by the caller with
    lmforge.outputs.check_output), which appears whole at the end."""
    with staged(out) as tmp:
        if explanations:
            write_explanation_files(tmp, explanations, text)
        if maps is not None:
            write_attention_files(tmp, maps)
    return Path(out)


def write_explanation_files(tmp: Path, explanations: list[Explanation], text: str) -> None:
    """explanation.json, explanation.html and one PNG per method in the folder `tmp`."""
    payload = [e.to_json() for e in explanations]
    (tmp / "explanation.json").write_text(
        json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, ensure_ascii=False), "utf-8"
    )
    (tmp / "explanation.html").write_text(explanation_html(explanations, text), "utf-8")
    for e in explanations:
        attribution_png(e, tmp / f"{e.method}.png")


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>lmforge attention</title><style>STYLE</style>
</head><body><h1>Attention</h1>
<p>kind <select id="kind"></select> layer <select id="layer"></select> head <select id="head"></select></p>
<p>Row: the token that attends (query); column: the token attended to (key). Each row sums to 1.</p>
<table id="map"></table>
<script>
const DATA = PAYLOAD;
const $ = (id) => document.getElementById(id);
function fill(sel, values) { sel.innerHTML = values.map((v, i) => `<option value="${i}">${v}</option>`).join(""); }
function esc(s) { const d = document.createElement("span"); d.textContent = s; return d.innerHTML; }
function draw() {
  const k = DATA[$("kind").value], w = k.weights[+$("layer").value][+$("head").value];
  let rows = "<tr><th></th>" + k.keys.map((t) => `<th class="k">${esc(t)}</th>`).join("") + "</tr>";
  w.forEach((row, i) => {
    rows += `<tr><th>${esc(k.queries[i])}</th>` + row.map((a) =>
      `<td title="${a.toFixed(4)}" style="background:rgba(200,40,40,${a.toFixed(3)})">${a >= 0.1 ? a.toFixed(1) : ""}</td>`
    ).join("") + "</tr>";
  });
  $("map").innerHTML = rows;
}
function pick() {
  const k = DATA[$("kind").value];
  fill($("layer"), k.layers); fill($("head"), k.heads); draw();
}
$("kind").innerHTML = Object.keys(DATA).map((k) => `<option>${k}</option>`).join("");
$("kind").onchange = pick; $("layer").onchange = draw; $("head").onchange = draw;
pick();
</script></body></html>
"""


def attention_html(maps: AttentionMaps) -> str:
    payload = json.dumps(maps.to_json(), ensure_ascii=False).replace("</", "<\\/")
    return PAGE.replace("STYLE", STYLE).replace("PAYLOAD", payload)


def attention_png(weights, queries: list[str], keys: list[str], title: str, path: Path) -> None:
    plt = _pyplot()
    size = max(3.0, 0.35 * max(len(queries), len(keys)) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(weights, cmap="Reds", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(keys)), keys, rotation=90)
    ax.set_yticks(range(len(queries)), queries)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_attention_files(tmp: Path, maps: AttentionMaps) -> None:
    """attention.json, attention.html and a PNG per kind, layer and head in the folder `tmp`."""
    (tmp / "attention.json").write_text(json.dumps(maps.to_json(), ensure_ascii=False), "utf-8")
    (tmp / "attention.html").write_text(attention_html(maps), "utf-8")
    for kind, layers in maps.maps.items():
        for layer, m in zip(maps.layers_of(kind), layers):
            for head, w in zip(maps.head_numbers, m):
                attention_png(
                    w.numpy(),
                    maps.queries[kind],
                    maps.keys[kind],
                    f"{kind} layer {layer} head {head}",
                    tmp / f"{kind}-layer{layer}-head{head}.png",
                )
