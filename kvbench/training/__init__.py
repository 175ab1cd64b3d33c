"""Head-pattern training: learn which (layer, KV head) pairs need the full cache.

    kvbench prulong train ...   PruLong (Bhaskar et al., 2025): hard-concrete gates trained end to end with the
                                next-token loss under a min-max sparsity constraint (train.py)
    kvbench duo train ...       DuoAttention (Xiao et al., 2024): real gates trained to keep the final hidden
                                states of the mixed model close to full attention's (duo.py)

Both mix, per KV head, the output of full attention with that of streaming attention (sinks + a local
window) while the model's weights stay frozen (mixing.py), and both export the [layers, KV heads] table that
`method=prulong` / `method=duoattention` read (patterns.py).
"""
