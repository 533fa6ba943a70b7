"""`dreamd serve`: the model `current` names, answering over an OpenAI-compatible HTTP API, with
its conversations written back into the inbox (the loop's first and last arrows).

    request ─▶ api (validate, auth, bound) ─▶ engine (one worker, batches) ─▶ decoder (token steps)
                                                   ▲ version at batch start      │ deltas
    versions (watches `current`, loads, swaps) ────┘                             ▼
                                                  chatlog (batched JSONL ─▶ inbox tmp/ → new/)
"""
