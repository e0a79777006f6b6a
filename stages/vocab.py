"""Stage `vocab`: source and target must share their token list, index for index.

Checked from the tokenizer and config files alone (no weights), and before any stage runs a
model on the source: extract, attribute and the source-reading baselines depend on its record,
so a mismatched pair fails here in seconds instead of after the source passes.
"""

from pipeline.core import layout
from pipeline.core.artifacts import write_json
from pipeline.core.loading import check_same_vocab, head_rows, load_tokenizer, vocab_record
from pipeline.core.runner import run_stage


def main() -> None:
    src, tgt = layout.model_dir("source"), layout.model_dir("target")
    source_tok, target_tok = load_tokenizer(str(src)), load_tokenizer(str(tgt))
    check_same_vocab(source_tok, target_tok, head_rows(src), head_rows(tgt))
    write_json(layout.vocab_file(), vocab_record(source_tok, head_rows(src)))


if __name__ == "__main__":
    run_stage("vocab", main)
