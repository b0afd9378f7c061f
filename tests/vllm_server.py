"""A stand-in for ``vllm serve``: an OpenAI-compatible ``/v1/completions`` endpoint on 127.0.0.1
backed by a causal LM in this process. It serves the fields vLLM serves: ``echo`` with
``logprobs`` (each prompt token's log-probability, then the generated token's), ``n`` samples,
greedy at temperature 0."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class CompletionServer:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.requests, self.lock = model, tokenizer, [], threading.Lock()
        if model is not None:
            model.eval()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:  # one forward pass at a time, as one GPU would
                    outer.requests.append(body)
                    payload = outer.answer(body)
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @torch.no_grad()
    def answer(self, body: dict) -> dict:
        ids = self.tokenizer(body["prompt"], return_tensors="pt")["input_ids"]
        generated = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=body.get("max_tokens", 16),
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new = generated[0, ids.shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        choice = {"index": 0, "text": text, "finish_reason": "length"}
        if body.get("echo"):
            every = torch.cat([ids[0], new[:1]])
            logits = self.model(input_ids=every[None]).logits[0].float().log_softmax(-1)
            scored = [None] + logits[:-1].gather(-1, every[1:, None])[:, 0].tolist()
            choice.update(
                text=body["prompt"] + self.tokenizer.decode(new[:1]),
                logprobs={"tokens": [self.tokenizer.decode(t) for t in every], "token_logprobs": scored},
            )
        return {"object": "text_completion", "model": body["model"], "choices": [choice] * body.get("n", 1)}

    def close(self):
        self.server.shutdown()


class RouterServer(CompletionServer):
    """Several models behind one endpoint, chosen by the request's ``model`` (as a router in front of
    several ``vllm serve <directory>`` processes does): here, the checkpoint at that path."""

    def __init__(self):
        from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer

        self.loaded, self.load = {}, lambda path: (load_causal_lm(path).eval(), load_tokenizer(path))
        super().__init__(None, None)

    def answer(self, body: dict) -> dict:
        if body["model"] not in self.loaded:
            self.loaded[body["model"]] = self.load(body["model"])
        self.model, self.tokenizer = self.loaded[body["model"]]
        return super().answer(body)
