#!/usr/bin/env python3
"""Chat traffic with the official openai client, for the llama e2e tests.

    python3 tests/llama/drive.py --base-url http://127.0.0.1:8080/v1 --workers 4 \
        --reference v1=http://127.0.0.1:9001/v1 --reference v2=http://127.0.0.1:9002/v1

Workers send chat completions until standard input closes (or --max-seconds pass): even
workers plain, odd workers `"stream": true`. Every answer is checked:

- it is a 200 that the client parsed, and a stream ends with a `finish_reason` (a stream that
  ends with no content and no finish reason is a failed generation that looks like success);
- it names its version in cutover's `x-cutover-version` header (the `model` field cannot: the
  server echoes the request's `model`);
- with references: the text equals what that version's server answers directly. Generation is
  greedy (temperature 0), so each version has one answer per prompt, and the two versions'
  answers differ: a stream that mixed versions, or a version header that lied, shows here.

Prints `ok N` after each good answer and `failed N` after each bad one (the test waits on these
to pace its switches), then one line `summary {json}`. Exit status 0 even when answers failed: the test asserts on the summary.
The client never retries (`max_retries=0`): a retry would hide the failure under test.
"""

import argparse
import json
import sys
import threading
import time

import openai

PROMPT_PLAIN = "hello model"
PROMPT_STREAM = "ping the stream"


def plain(client, max_tokens):
    raw = client.chat.completions.with_raw_response.create(
        model="m",
        messages=[{"role": "user", "content": PROMPT_PLAIN}],
        max_tokens=max_tokens,
        temperature=0,
    )
    c = raw.parse()
    choice = c.choices[0]
    if not choice.finish_reason:
        raise RuntimeError(f"completion without finish_reason: {c}")
    return raw.headers, c.model, choice.message.content or ""


def stream(client, max_tokens):
    with client.chat.completions.with_streaming_response.create(
        model="m",
        messages=[{"role": "user", "content": PROMPT_STREAM}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    ) as resp:
        text, models, finish, chunks = [], set(), None, 0
        for chunk in resp.parse():
            chunks += 1
            models.add(chunk.model)
            for ch in chunk.choices:
                if ch.delta and ch.delta.content:
                    text.append(ch.delta.content)
                if ch.finish_reason:
                    finish = ch.finish_reason
        if finish is None:
            raise RuntimeError(
                f"stream ended without finish_reason after {chunks} chunks, text {''.join(text)!r}"
            )
        if len(models) > 1:
            raise RuntimeError(f"one stream named several models: {sorted(models)}")
        return resp.headers, next(iter(models), ""), "".join(text)


def client_for(url, timeout):
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=timeout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--max-tokens", type=int, default=8, help="per plain answer")
    # Longer streams (a few ms of Python per token) so switches land inside running streams.
    ap.add_argument("--stream-tokens", type=int, default=48, help="per streamed answer")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--reference", action="append", default=[], metavar="VERSION=URL")
    args = ap.parse_args()

    out_lock = threading.Lock()

    def say(line):
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    # What each version answers, asked of its server directly.
    refs = {}
    for spec in args.reference:
        version, url = spec.split("=", 1)
        c = client_for(url, args.timeout)
        refs[version] = {
            "plain": plain(c, args.max_tokens)[2],
            "stream": stream(c, args.stream_tokens)[2],
        }
    texts = [(r["plain"], r["stream"]) for r in refs.values()]
    refs_differ = len(set(texts)) == len(texts)

    stop = threading.Event()
    lock = threading.Lock()
    st = {
        "ok": 0,
        "failed": 0,
        "plain_ok": 0,
        "stream_ok": 0,
        "errors": [],
        "by_version": {},
        "models": {},
        "mismatched": 0,
    }

    def worker(i):
        c = client_for(args.base_url, args.timeout)
        kind = "stream" if i % 2 else "plain"
        while not stop.is_set():
            try:
                if i % 2:
                    headers, model, text = stream(c, args.stream_tokens)
                else:
                    headers, model, text = plain(c, args.max_tokens)
                version = headers.get("x-cutover-version", "")
                err = None
                if not version:
                    err = "no x-cutover-version header"
                elif version in refs and refs[version][kind] != text:
                    err = (
                        f"{kind} answer {text!r} tagged {version} is not {version}'s answer "
                        f"{refs[version][kind]!r}"
                    )
                with lock:
                    if err:
                        st["failed"] += 1
                        st["mismatched"] += 1
                        if len(st["errors"]) < 50:
                            st["errors"].append(err)
                        n = st["failed"]
                    else:
                        n = None
                if n is not None:
                    say(f"failed {n}")
                    continue
                with lock:
                    st["ok"] += 1
                    st[kind + "_ok"] += 1
                    st["by_version"][version] = st["by_version"].get(version, 0) + 1
                    st["models"][model] = st["models"].get(model, 0) + 1
                    n = st["ok"]
                say(f"ok {n}")
            except Exception as e:  # every failure counts; the test reads them
                with lock:
                    st["failed"] += 1
                    if len(st["errors"]) < 50:
                        st["errors"].append(f"{kind}: {type(e).__name__}: {e}"[:500])
                    n = st["failed"]
                say(f"failed {n}")
                # A refused connection fails at once: do not spin.
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.workers)]
    start = time.monotonic()
    for t in threads:
        t.start()

    def until_stdin_closes():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    stop.wait(args.max_seconds)
    stop.set()
    for t in threads:
        t.join(args.timeout + 5)
    st["seconds"] = round(time.monotonic() - start, 2)
    st["references"] = refs
    st["references_differ"] = refs_differ
    say("summary " + json.dumps(st))


if __name__ == "__main__":
    main()
