"""`python -m serving.example [--write README.md]`: the README's serving and real-time history
examples, answered by the model `make run` deployed (`make readme-example`).

It starts the model server (`python -m serving`) on free loopback ports, sends the README's
four requests (v2 for a known and an unseen user, the same over v1, similar items from a
misspelt title, and the explain verb for the known user), and prints the block of the README that shows them: the requests, the
answers as the server gave them, and the titles they stand for. With `--write FILE` it
replaces the block between `<!-- serving-example:start -->` and `<!-- serving-example:end -->`
in FILE, so that the example never drifts from what the model answers; likewise the block
between `<!-- history-example:start -->` and `<!-- history-example:end -->`: user 1's answer, a
like of its first item through the events service (`python -m serving.events`), and the next
answer, from the same model (so the two blocks show the same first answer).
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START, END = "<!-- serving-example:start -->", "<!-- serving-example:end -->"
# The real-time history example, answered by the same model (so the two never disagree).
HISTORY_START, HISTORY_END = "<!-- history-example:start -->", "<!-- history-example:end -->"
V2_REQUEST = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["1", "new-user"]},
                         {"name": "k", "datatype": "INT32", "shape": [1], "data": [3]}]}
V1_USER = {"instances": [{"user_id": "1", "k": 3}]}
V1_TITLE = {"instances": [{"item_id": "toy stroy", "k": 3}]}
V1_EXPLAIN = {"instances": [{"user_id": "1", "k": 2}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rounded(values: list) -> list:
    return [round(v, 3) if isinstance(v, float) else v for v in values]


def ask(model_dir: Path) -> dict:
    """The three answers, from a server on `model_dir`."""
    import httpx

    http, grpc = _free_port(), _free_port()
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-dir", str(model_dir), "--host", "127.0.0.1",
             "--http-port", str(http), "--grpc-port", str(grpc)], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{http}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"the server exited:\n{log.read().decode()[-2000:]}")
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready in 300s")
                time.sleep(0.5)
            v2 = httpx.post(f"{url}/v2/models/recsys/infer", json=V2_REQUEST, timeout=30).json()
            v1_user = httpx.post(f"{url}/v1/models/recsys:predict", json=V1_USER, timeout=30).json()
            v1_title = httpx.post(f"{url}/v1/models/recsys:predict", json=V1_TITLE, timeout=30).json()
            explained = httpx.post(f"{url}/v1/models/recsys:explain", json=V1_EXPLAIN, timeout=30).json()
        finally:
            server.terminate()
            server.wait(30)
    return {"v2": v2, "v1_user": v1_user, "v1_title": v1_title, "explain": explained}


def _wait(url: str, process: subprocess.Popen, log, what: str) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the {what} exited:\n{log.read().decode()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the {what} did not become ready in 300s")
        time.sleep(0.5)


def ask_history(model_dir: Path) -> dict:
    """User 1's answer, a like of its first item through the events service, the next answer:
    a model server and an events service sharing a fresh feedback store."""
    import httpx

    http, grpc, events = _free_port(), _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        store = f"sqlite:///{Path(tmp) / 'feedback.db'}"
        processes = [subprocess.Popen(
            [sys.executable, "-m", "serving.events", "--store", store, "--port", str(events)],
            stdout=log, stderr=subprocess.STDOUT)]
        try:
            _wait(f"http://127.0.0.1:{events}/healthz", processes[0], log, "events service")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "serving", "--model-dir", str(model_dir), "--host",
                 "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc),
                 "--online-store", store], stdout=log, stderr=subprocess.STDOUT))
            url = f"http://127.0.0.1:{http}"
            _wait(f"{url}/v2/health/ready", processes[1], log, "server")
            ask = lambda: httpx.post(f"{url}/v1/models/recsys:predict", json=V1_USER,
                                     timeout=30).json()["predictions"][0]
            first = ask()
            liked = first["item_ids"][0]
            event = {"event_id": "e-2", "type": "like", "user_id": "1", "item_id": liked}
            httpx.post(f"http://127.0.0.1:{events}/v1/events", json=event, timeout=30).raise_for_status()
            deadline, second = time.monotonic() + 30, first
            while liked in second["item_ids"] and time.monotonic() < deadline:
                time.sleep(0.5)
                second = ask()
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(30)
    return {"first": first, "second": second, "event": event}


def render_history(answers: dict, titles: dict[str, str]) -> str:
    first, second, event = answers["first"], answers["second"], answers["event"]
    named = lambda items: [titles.get(i, i) for i in items]
    liked, *rest = named(first["item_ids"])
    nxt = named(second["item_ids"])
    v1 = "curl -s localhost:8080/v1/models/recsys:predict -d '" + json.dumps(V1_USER) + "'"
    return "\n".join([
        HISTORY_START,
        "```bash",
        "recsys serve & recsys events serve &      # after `make run`: one run home, no flags",
        v1,
        f'# [{{"user_id": "1", "cold_start": false, "item_ids": {json.dumps(first["item_ids"])}, ...}}]',
        "curl -s localhost:8090/v1/events -H 'content-type: application/json' -d '"
        + json.dumps(event) + "'",
        "sleep 1; " + v1,
        f'# [{{"user_id": "1", "cold_start": false, "item_ids": {json.dumps(second["item_ids"])}, ...}}]',
        "```",
        "",
        f"User 1 liked {liked}, the top of the first answer (with {'; '.join(rest)}); the",
        f"next answer is {'; '.join(nxt)}, scored with {liked} in the history, and",
        "`runs/feedback.db` holds both answers as impressions.",
        "(Regenerated by `make readme-example` from the model `make run` deployed, as the example above.)",
        HISTORY_END,
    ])


def render(answers: dict, titles: dict[str, str]) -> str:
    v2 = answers["v2"]
    outputs = {o["name"]: o for o in v2["outputs"]}
    lines = [
        START,
        "```bash",
        "curl -s localhost:8080/v2/models/recsys/infer -H 'content-type: application/json' -d '{",
        '  "inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["1", "new-user"]},',
        '             {"name": "k", "datatype": "INT32", "shape": [1], "data": [3]}]}\'',
        "```",
        "",
        "```json",
        f'{{"model_name": "recsys", "model_version": "{v2["model_version"]}", "id": "{v2["id"][:8]}...",',
        ' "outputs": [',
    ]
    shown = []
    for name in ("item_ids", "scores", "cold_start"):
        o = outputs[name]
        data = _rounded(o["data"])
        shown.append(f'   {{"name": "{name}", "datatype": "{o["datatype"]}", "shape": {json.dumps(o["shape"])}, '
                     f'"data": {json.dumps(data)}}}')
    lines += [",\n".join(shown) + "]}", "```", ""]
    ids = outputs["item_ids"]["data"]
    known, cold = ids[:3], ids[3:6]
    named = lambda items: "; ".join(titles.get(i, i) for i in items)  # titles hold commas
    lines += [
        f"User `1` gets {named(known)}.",
        "`new-user` was never seen, so `cold_start` is true and the answer is the cold-start list,",
        f"the most popular movies ({named(cold)}).",
        "The same call over v1, and \"movies like this one\" from a misspelt title (the",
        "`predictions` of each answer):",
        "",
        "```bash",
        "curl -s localhost:8080/v1/models/recsys:predict -d '" + json.dumps(V1_USER) + "'",
    ]
    for key, request in (("v1_user", None), ("v1_title", V1_TITLE)):
        if request is not None:
            lines.append("curl -s localhost:8080/v1/models/recsys:predict -d '" + json.dumps(request) + "'")
        preds = [{**p, "scores": _rounded(p["scores"])} for p in answers[key]["predictions"]]
        lines.append("# " + json.dumps(preds))
    title = answers["v1_title"]["predictions"][0]
    lines += [
        "```",
        "",
        (f"`toy stroy` resolves to {title['resolved_title']} (item {title['resolved_item_id']}); "
         f"the answer is {named(title['item_ids'])}."),
    ]
    if "explain" in answers:
        lines += render_explain(answers["explain"])
    lines += [
        "(Regenerated by `make readme-example` from the model `make run` deployed.)",
        END,
    ]
    return "\n".join(lines)


def _round_all(value):
    """`value` with every float rounded to 3 decimals, at any depth."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_round_all(v) for v in value]
    if isinstance(value, dict):
        return {k: _round_all(v) for k, v in value.items()}
    return value


def render_explain(answer: dict) -> list[str]:
    """The README's explain call: the answer as the server gave it (floats rounded), one line
    per field of each explained item, and what it says in words."""
    answer = _round_all(answer)
    explanation = answer["explanations"][0]
    items = []
    for item in explanation["items"]:
        fields = [f'"{key}": {json.dumps(value)}' for key, value in item.items()]
        items.append("    {" + ",\n     ".join(fields) + "}")
    head = {k: v for k, v in explanation.items() if k != "items"}
    lines = [
        "",
        "Why: the explain verb (`:explain`, the same body) answers the same predictions and, per",
        "row, what each item's score is made of:",
        "",
        "```bash",
        "curl -s localhost:8080/v1/models/recsys:explain -d '" + json.dumps(V1_EXPLAIN) + "'",
        "```",
        "",
        "```json",
        '{"predictions": ' + json.dumps(answer["predictions"]) + ",",
        ' "explanations": [' + json.dumps(head)[:-1] + ', "items": [',
        ",\n".join(items) + "]}],",
        (f' "model_name": "{answer["model_name"]}", "model_version": "{answer["model_version"]}", '
         f'"id": "{str(answer["id"])[:8]}..."}}'),
        "```",
        "",
    ]
    first = explanation["items"][0]
    if explanation["kind"] == "cold_start":
        lines.append(f"User {explanation['user_id']} is new to the model: the answer is the "
                     f"{explanation['reason']} items ({first['title']} first).")
    because = "; ".join(f"{b['title']} ({b['contribution']:+.3f})" for b in first["because"])
    if because:
        lines.append(f"{first['title']} is first because user {explanation['user_id']} liked {because}: the "
                     f"{first['because'][0]['generator']} contributions of those history items.")
    ranker = first.get("ranker")
    if ranker:
        groups = sorted(ranker["groups"].items(), key=lambda kv: -abs(kv[1]))
        lines.append(f"The ranker's score {ranker['raw_score']:+.3f} is its bias "
                     f"{ranker['bias']:+.3f} plus the groups' contributions, led by "
                     f"{groups[0][0]} ({groups[0][1]:+.3f}).")
    following = first.get("versus_next")
    if following:
        top = max(following["groups"].items(), key=lambda kv: abs(kv[1]))
        second = explanation["items"][1]["title"]
        lines.append(f"It is above {second} by {following['difference']:+.3f}, mostly from "
                     f"{top[0]} ({top[1]:+.3f}).")
    return lines


def replace_block(text: str, block: str, markers: tuple[str, str] = (START, END)) -> str:
    """`text` with the part between the markers (markers included) replaced by `block`."""
    begin, finish = markers
    start, end = text.find(begin), text.find(finish)
    if start < 0 or end < start:
        raise ValueError(f"no {begin} ... {finish} block to replace")
    return text[:start] + block + text[end + len(finish):]


def main(argv: list[str] | None = None) -> int:
    from components.errors import RecsysError
    from components.models.artifact import load_model
    from components.release.deploy import resolve_served_model

    parser = argparse.ArgumentParser(prog="python -m serving.example", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="default: the model the last `recsys run` deployed")
    parser.add_argument("--write", type=Path, metavar="FILE", help="replace the example block in FILE")
    args = parser.parse_args(argv)
    try:
        model_dir = args.model_dir or resolve_served_model()
        model = load_model(model_dir)
    except RecsysError as exc:
        print(f"serving.example: error: {exc}", file=sys.stderr)
        return 1
    items = model.data_.items
    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str))) if "title" in items else {}
    block = render(ask(model_dir), titles)
    history = render_history(ask_history(model_dir), titles)
    if args.write:
        text = replace_block(args.write.read_text(), block)
        args.write.write_text(replace_block(text, history, (HISTORY_START, HISTORY_END)))
        print(f"rewrote the serving and real-time history examples in {args.write}")
    else:
        print(block + "\n\n" + history)
    return 0


if __name__ == "__main__":
    sys.exit(main())
