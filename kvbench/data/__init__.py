"""Task data: synthetic generators (any length, the model's tokenizer) and readers of HELMET's released files.

recall.py   JSON KV and RULER MK-needle / MK-UUID / MV, generated (or HELMET's files when present)
helmet.py   RAG (KILT), re-rank (MS MARCO) and ICL from a local copy of HELMET's data
synth.py    one offline synthetic task per category, simple enough for a tiny model to learn
metrics.py  substring exact match, RULER recall, NDCG@10 of a parsed ranking, label accuracy
results.py  lm-eval's process_results for every task (metric, common score, per-sample footprint)
common.py   settings from lm-eval (length, seed, tokenizer, data dir), fitting prompts to a length
fetch.py    `kvbench data fetch`: resumable, checksummed downloads of HELMET's data and the ICL sets
"""
