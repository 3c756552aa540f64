"""`llorch serve` with real clients: the official `openai` package (whole and streamed), raw
HTTP for the error shapes, `curl -N` for the SSE framing, a client that goes away, SIGTERM.
Model: SmolLM2-135M on the CPU (harness.py)."""

import json
import subprocess
import threading
import time

import httpx
import openai
import pytest

from harness import Server, binary, model_path

CTX = 1024


@pytest.fixture(scope="module")
def server():
    with Server("--parallel", "2", "--ctx", str(CTX), "--name", "smollm2") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chat(client, content, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": content}], **kw)


def token_id(text):
    """The id of a text that is one token, from `llorch tokenize`."""
    out = subprocess.run([binary(), "tokenize", "-m", model_path(), text],
                         check=True, capture_output=True, text=True).stdout
    ids = json.loads(out)
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens"
    return ids[0]


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    m = httpx.get(server.url + "/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    for name in ["llorch_requests_total", "llorch_queue_depth", "llorch_batch_size",
                 "llorch_time_to_first_token_seconds_bucket", "llorch_generated_tokens_total",
                 "llorch_decode_tokens_per_second_count"]:
        assert name in m.text


def test_chat_whole_and_streamed_agree(client):
    r = chat(client, "What is the capital of France?", max_tokens=24)
    text = r.choices[0].message.content
    assert "Paris" in text
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    chunks = list(chat(client, "What is the capital of France?", max_tokens=24, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text, "the stream carries the same text"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens


def test_completions_whole_and_streamed(client):
    kw = dict(model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0)
    r = client.completions.create(**kw)
    assert r.object == "text_completion"
    assert "Paris" in r.choices[0].text
    assert r.usage.completion_tokens <= 6
    s = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    assert s[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_max_tokens_gives_length(client):
    r = chat(client, "Count from 1 to 100, separated by commas.", max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_stop_cuts_before_the_stop_string(client):
    prompt = "Count from 1 to 20, separated by commas."
    full = chat(client, prompt, max_tokens=60).choices[0].message.content
    assert "7" in full, full
    r = chat(client, prompt, max_tokens=60, stop=["7"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index("7")]
    # Streamed: the stop string never appears, not even in part.
    s = "".join(c.choices[0].delta.content or "" for c in
                chat(client, prompt, max_tokens=60, stop=["7", "never there"], stream=True))
    assert s == full[:full.index("7")]


def test_logit_bias(client):
    banana = token_id(" banana")
    r = client.completions.create(model="smollm2", prompt="My favourite fruit is", max_tokens=3,
                                  temperature=0, logit_bias={str(banana): 100})
    assert r.choices[0].text == " banana" * 3
    # -100 bans it: the greedy choice changes.
    r = client.completions.create(model="smollm2", prompt="I ate a yellow", max_tokens=1,
                                  temperature=0)
    first = r.choices[0].text
    r = client.completions.create(model="smollm2", prompt="I ate a yellow", max_tokens=1,
                                  temperature=0, logit_bias={str(token_id(first)): -100})
    assert r.choices[0].text != first


def test_seed_repeats_a_sampled_reply(client):
    kw = dict(max_tokens=24, temperature=1.0, top_p=0.95)
    a = chat(client, "Tell me about cats.", seed=42, **kw).choices[0].message.content
    b = chat(client, "Tell me about cats.", seed=42, **kw).choices[0].message.content
    c = chat(client, "Tell me about cats.", seed=43, **kw).choices[0].message.content
    assert a == b
    assert a != c  # 24 tokens sampled at T=1 from two seeds: equal only by a rare accident


def error(server, path, body):
    r = httpx.post(server.url + path, content=body,
                   headers={"content-type": "application/json"}, timeout=60)
    return r.status_code, r.json()["error"]


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"999999": 1}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": "x"}, "seed"),
])
def test_bad_requests_name_the_field(server, body, param):
    status, e = error(server, "/v1/chat/completions", json.dumps(body))
    assert status == 400
    assert e["param"] == param and e["type"] == "invalid_request_error"
    assert param in e["message"]


def test_bad_json_oversized_prompt_and_the_openai_client(server, client):
    status, e = error(server, "/v1/chat/completions", "{nope")
    assert status == 400 and "JSON" in e["message"]
    # A prompt longer than the context: a 400 naming it, and the server goes on.
    long = "word " * (2 * CTX)
    status, e = error(server, "/v1/completions", json.dumps({"prompt": long}))
    assert status == 400 and e["param"] == "prompt" and e["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as ex:
        chat(client, long)
    assert ex.value.status_code == 400 and "context" in str(ex.value)
    with pytest.raises(openai.BadRequestError) as ex:
        chat(client, "hi", temperature=5)
    assert "temperature" in str(ex.value)
    assert httpx.get(server.url + "/health").status_code == 200
    assert chat(client, "hi", max_tokens=2).usage.completion_tokens <= 2


def test_sse_framing_with_curl(server):
    body = json.dumps({"model": "smollm2", "stream": True, "max_tokens": 12, "temperature": 0,
                       "messages": [{"role": "user", "content": "Say hello."}]})
    out = subprocess.run(
        ["curl", "-sS", "-N", "-D", "-", server.url + "/v1/chat/completions",
         "-H", "content-type: application/json", "-d", body],
        check=True, capture_output=True, timeout=120).stdout.decode()
    head, _, stream = out.partition("\r\n\r\n")
    assert "content-type: text/event-stream" in head.lower()
    assert stream.endswith("data: [DONE]\n\n")
    events = stream.split("\n\n")[:-1]
    assert len(events) >= 3
    for ev in events:
        assert ev.startswith("data: ") and "\n" not in ev, repr(ev)
    objs = [json.loads(ev[6:]) for ev in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    assert objs[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def log_line_after(server, start, pattern, timeout=30):
    line = server.wait_for_line(pattern, timeout, start)
    assert line, f"no log line matching {pattern!r}:\n{server.log()}"
    return line


def test_a_client_that_goes_away_cancels_its_generation():
    # One sequence slot: if a dropped request kept generating, the next would wait for it.
    with Server("--parallel", "1", "--ctx", "4096") as s:
        long = {"model": "m", "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0}
        # Streamed: read two events, then hang up.
        start = len(s.lines)
        with httpx.stream("POST", s.url + "/v1/completions", json={**long, "stream": True},
                          timeout=60) as r:
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data: ")
                if events == 2:
                    break
        log_line_after(s, start, r"client gone: cancelled")
        t = time.monotonic()
        r = httpx.post(s.url + "/v1/completions", json={**long, "max_tokens": 4}, timeout=120)
        assert r.status_code == 200
        assert time.monotonic() - t < 10, "the slot was still busy with the dropped stream"

        # Whole (not streamed): the client times out and closes the connection.
        start = len(s.lines)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/completions", json=long, timeout=1.5)
        log_line_after(s, start, r"client gone: cancelled")
        t = time.monotonic()
        r = httpx.post(s.url + "/v1/completions", json={**long, "max_tokens": 4}, timeout=120)
        assert r.status_code == 200 and time.monotonic() - t < 10
        metrics = httpx.get(s.url + "/metrics").text
        assert "llorch_requests_cancelled_total 2" in metrics, metrics


def test_sigterm_drains_then_cancels():
    with Server("--parallel", "2", "--ctx", "4096", "--grace", "3") as s:
        results = {}

        def stream(name, max_tokens):
            body = {"model": "m", "prompt": "Once upon a time", "max_tokens": max_tokens,
                    "temperature": 0, "stream": True}
            with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
                results[name] = [line for line in r.iter_lines() if line]

        short = threading.Thread(target=stream, args=("short", 40))
        long = threading.Thread(target=stream, args=("long", 3000))
        long.start()
        short.start()
        assert s.wait_for_line(r"stopping", 0.5) is None
        time.sleep(0.5)  # both are generating
        t = time.monotonic()
        s.sigterm()
        assert s.wait_for_line(r"stopping: no new connections", 10)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/health", timeout=5)
        short.join(60)
        long.join(60)
        assert s.wait(30) == 0, s.log()
        took = time.monotonic() - t
        # The short one finished normally within the grace period ...
        assert results["short"][-1] == "data: [DONE]"
        assert json.loads(results["short"][-2][6:])["choices"][0]["finish_reason"] == "length"
        # ... the long one was cancelled when it ended, and told why.
        last = json.loads(results["long"][-1][6:])
        assert "shutting down" in last["error"]["message"], last
        assert len(results["long"]) > 2
        assert 3 <= took < 15, took
        log = s.log()
        assert "grace period over: cancelling 1 requests" in log and "stopped" in log
