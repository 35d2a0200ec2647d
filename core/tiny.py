"""Small offline stand-ins for downloads, shared by the demo and the tests."""

CORPUS = ["a cat sits on the mat", "two dogs play in the park", "what color is the cat?", "how many dogs?"]


def build_tiny_tokenizer(folder, vocab_size: int = 297, corpus: list[str] | None = None) -> str:
    """Train a byte-level BPE with RoBERTa's special tokens on a few sentences (`corpus`, default `CORPUS`) and save
    it; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS if corpus is None else corpus, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = RobertaTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    fast.save_pretrained(str(folder))
    return str(folder)


def build_tiny_clip_tokenizer(folder) -> str:
    """A CLIP-style BPE tokenizer (lower-cased words, `</w>` word ends, `<|startoftext|>`/`<|endoftext|>`) whose
    merges are learnt on a few sentences; every byte, word-final or not, is in the vocabulary (about 560 tokens)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # CLIPTokenizer's own normaliser and pre-tokenizer, so the merges are learnt on the pieces it will see.
    template = CLIPTokenizer()._tokenizer
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.normalizer, learner.pre_tokenizer = template.normalizer, template.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=320, end_of_word_suffix="</w>", show_progress=False)
    learner.train_from_iterator(CORPUS, trainer)
    merges = [tuple(pair) for pair in json.loads(learner.to_str())["model"]["merges"]]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [char + "</w>" for char in alphabet] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(str(folder))
    return str(folder)
