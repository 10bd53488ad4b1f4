"""The official openai client against a shared listener (tests/e2e/shared_listener.rs).

`once`: one request of each kind, printed as one JSON line.
`hosts`: the Host and path-prefix routes, printed as one JSON line.
`load`: chat and embeddings requests from a few threads until stdin closes; prints
`seen KIND VERSION` the first time an answer of that version comes, then `summary JSON`.
"""
import argparse
import json
import sys
import threading

import openai
from openai import OpenAI

MESSAGES = [{"role": "user", "content": "hi"}]


def error_of(e):
    return {"status": e.status_code, "code": e.code, "type": e.type, "param": e.param, "message": e.message}


def once(c, a):
    out = {}
    chat = c.chat.completions.create(model=a.chat_model, messages=MESSAGES)
    out["chat_version"] = chat.model
    out["stream_versions"] = sorted({ch.model for ch in c.chat.completions.create(model=a.chat_model, messages=MESSAGES, stream=True)})
    emb = c.embeddings.create(model=a.embed_model, input="hello")
    out["embed_version"] = emb.model
    out["embed_dims"] = len(emb.data[0].embedding)
    out["models"] = sorted(m.id for m in c.models.list())
    try:
        c.chat.completions.create(model="gpt-9", messages=MESSAGES)
        out["unknown"] = "answered"
    except openai.NotFoundError as e:
        out["unknown"] = error_of(e)
    return out


def hosts(a):
    out = {}
    by_host = OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=30, default_headers={"Host": "chat.example"})
    out["chat_by_host"] = by_host.chat.completions.create(model="any", messages=MESSAGES).model
    plain = OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=30)
    out["embed_by_prefix"] = plain.embeddings.create(model="any", input="hello").model
    try:
        plain.chat.completions.create(model="any", messages=MESSAGES)
        out["no_match"] = "answered"
    except openai.NotFoundError as e:
        out["no_match"] = error_of(e)
    return out


def load(c, a):
    lock = threading.Lock()
    stop = threading.Event()
    counts = {}
    failures = []

    def record(kind, version):
        with lock:
            key = f"{kind} {version}"
            if key not in counts:
                print(f"seen {key}", flush=True)
            counts[key] = counts.get(key, 0) + 1

    def worker(i):
        while not stop.is_set():
            try:
                if i % 2 == 0:
                    record("chat", c.chat.completions.create(model=a.chat_model, messages=MESSAGES).model)
                else:
                    record("embed", c.embeddings.create(model=a.embed_model, input="hello").model)
            except Exception as e:  # every failure counts, whatever its kind
                with lock:
                    failures.append(repr(e)[:300])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.workers)]
    for t in threads:
        t.start()
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join()
    print("summary " + json.dumps({"counts": counts, "failures": failures}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["once", "hosts", "load"])
    p.add_argument("--base-url", required=True)
    p.add_argument("--chat-model", default="llama-3-8b")
    p.add_argument("--embed-model", default="bge-small")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--ca", help="the CA file a TLS listener's certificate is checked against")
    a = p.parse_args()
    extra = {}
    if a.ca:
        import httpx

        extra["http_client"] = httpx.Client(verify=a.ca)
    c = OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=30, **extra)
    if a.mode == "once":
        print(json.dumps(once(c, a)), flush=True)
    elif a.mode == "hosts":
        print(json.dumps(hosts(a)), flush=True)
    else:
        load(c, a)


if __name__ == "__main__":
    main()
