"""Hugging Face interop: CLIP and BERT safetensors checkpoints and tokenizers, from local files.

``load_clip`` / ``save_clip`` (``DualEncoder``), ``load_bert`` (``TextTransformer``),
``load_bert_mlm`` (``MaskedLanguageModel``), ``load_tokenizer``. transformers is imported only
when one of these is called.
"""

from jaxalign.interop.hf import load_bert, load_bert_mlm, load_clip, load_tokenizer, save_clip

__all__ = ["load_bert", "load_bert_mlm", "load_clip", "load_tokenizer", "save_clip"]
