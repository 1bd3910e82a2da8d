"""Ask feather-serve with the official OpenAI Python client.

    feather-serve ./feather-export --port 8000            # in another shell
    pip install openai
    python examples/openai_client.py photo.jpg "What is on the table?" [--stream]

The image travels as a base64 data URI (the server never fetches URLs). The reply's
``feather`` extension holds the token ids, the kept image indices per pruning stage and
the timings.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes


def data_uri(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "image/png"
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"


def main(argv: list[str] | None = None) -> int:
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)

    client = OpenAI(base_url=args.url, api_key=args.api_key)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": [{"type": "text", "text": args.prompt},
                                             {"type": "image_url", "image_url": {"url": data_uri(args.image)}}]}]
    if args.stream:
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                                    stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        return 0
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens)
    print(reply.choices[0].message.content)
    ext = reply.model_extra["feather"]
    kept = ", ".join(f"layer {s['layer']}: {len(s['kept'])} image tokens" for s in ext["stages"])
    print(f"[{reply.usage.prompt_tokens} prompt tokens | kept {kept} | first token "
          f"{ext['timings']['ttft_s'] * 1000:.0f} ms]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
