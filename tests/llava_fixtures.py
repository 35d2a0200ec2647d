"""Tiny LLaVA-OneVision-style Hub folders with a real transformers `LlavaOnevisionProcessor` (a word-level tokenizer
with Qwen2's ChatML and image/video tokens, the PIL LLaVA-OneVision image processor at 28 px with AnyRes pinpoints),
for the MLLM harness, its notebook and the model tests; and multiple-choice VQA data.

No torchvision here: transformers cannot check a video processor's class without it, so the processor is built with
`mllm_vqa.build_processor` (the video processor itself is instantiated and saved, so the folders are complete).
"""

import json
from pathlib import Path

import torch
import transformers
from evaluation_fixtures import ANSWERS, write_images
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

from towerzoo.conversions.hub_folder import write_hub_folder
from towerzoo.evaluation.mllm_vqa import (
    LLAVA_OV_PROMPT_TEMPLATE,
    MULTIPLE_CHOICE_POST_PROMPT,
    SHORT_ANSWER_POST_PROMPT,
    build_processor,
)
from towerzoo.models.llava_ov_manager import (
    AUTO_CLASSES,
    LlavaOnevisionManagerConfig,
    LlavaOnevisionManagerForConditionalGeneration,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<unk>"]
CHOICE_WORDS = ["cat", "dog", "red", "blue", "table", "two", "three", "sky", "tree"]
# text the tokenizer knows word by word: the prompts, the VQAv2 fixture's questions and answers, the choices, letters
CORPUS = [
    LLAVA_OV_PROMPT_TEMPLATE,
    SHORT_ANSWER_POST_PROMPT,
    MULTIPLE_CHOICE_POST_PROMPT,
    "what is thing number 0 1 2 3 4 5 6 7 8 9 10 11 ? which animal color is shown in the picture",
    " ".join(ANSWERS + CHOICE_WORDS),
    "A B C D E a b c d e ( ) . , : The answer",
]
IMAGE_SIZE, PATCH_SIZE = 28, 14
GRID_PINPOINTS = [[28, 28], [28, 56], [56, 28]]
MEAN = STD = [0.5, 0.5, 0.5]  # SigLIP's
EOS_SCALE = 3.0  # how much more the end of turn weighs in `answer_only_head` (a mix of short and cut answers)


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `CORPUS` (words, punctuation and newlines are tokens; spaces separate) with Qwen2's
    special tokens: <|endoftext|> pads, <|im_end|> ends a turn (eos), <image> and <video> are the placeholders."""
    splitter = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="removed", invert=True)
    pieces = {piece for text in CORPUS for piece, _ in splitter.pre_tokenize_str(text) if piece not in "{}"}
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(pieces - set(SPECIAL_TOKENS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = splitter
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[1:5],
    )


def tiny_llava_processor() -> transformers.LlavaOnevisionProcessor:
    """transformers' LLaVA-OneVision processor at the tiny vision size: 28 px views of 2x2 patches, AnyRes over
    `GRID_PINPOINTS`, every patch a token (`vision_feature_select_strategy="full"`, as LLaVA-OneVision)."""
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    image_processor = LlavaOnevisionImageProcessorPil(
        size=size, crop_size=size, image_grid_pinpoints=GRID_PINPOINTS, image_mean=MEAN, image_std=STD
    )
    return build_processor(
        transformers.LlavaOnevisionProcessor,
        image_processor=image_processor,
        tokenizer=tiny_chat_tokenizer(),
        video_processor=LlavaOnevisionVideoProcessor(size=size, image_mean=MEAN, image_std=STD),
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
    )


def tiny_llava_config(tokenizer, manager_type: str = "static") -> LlavaOnevisionManagerConfig:
    """A Qwen2 (4 layers, 32 wide) + SigLIP (3 layers, 28 px) LLaVA-OV-Manager whose vocabulary is the tokenizer's;
    managers over vision layers 1-3 before language-model layers 0 and 2 (none with `manager_type="none"`)."""
    return LlavaOnevisionManagerConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 48,
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 48,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="full",
        manager_type=manager_type,
        manager_vision_layers=[1, 2, 3],
        manager_llm_layers=[0, 2],
    )


def answer_only_head(model, tokenizer) -> None:
    """Let the language-model head produce only the end of turn, the short answers, the choice words and the option
    letters (other rows zeroed, these scaled up), so that a random model's generations read like answers."""
    words = ["<|im_end|>", *ANSWERS, *CHOICE_WORDS, "A", "B", "C", "D"]
    keep = torch.tensor(tokenizer.convert_tokens_to_ids(words))
    with torch.no_grad():
        head = model.lm_head.weight
        kept = head[keep] * 4
        kept[0] *= EOS_SCALE  # answers end after a few words
        head.zero_()
        head[keep] = kept


def tiny_llava_model(seed: int = 0, manager_type: str = "static", processor=None):
    """A tiny LLaVA-OV-Manager (random weights from `seed`: matrices N(0, 0.2²), managers N(0, 1) so they act) and its
    processor."""
    processor = processor or tiny_llava_processor()
    torch.manual_seed(seed)
    model = LlavaOnevisionManagerForConditionalGeneration(tiny_llava_config(processor.tokenizer, manager_type)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2 and "manager" not in name:  # std 0.2: generations depend on the image and question
                parameter.normal_(0, 0.2)
        for manager in getattr(model.model, "managers", {}).values():
            manager.scores.normal_()
    answer_only_head(model, processor.tokenizer)
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def tiny_llava_ov_manager_folder(folder: Path, seed: int = 0, manager_type: str = "static") -> Path:
    """A LLaVA-OV-Manager Hub folder (`tiny_llava_model`) with its processor."""
    model, processor = tiny_llava_model(seed, manager_type)
    return write_hub_folder(model, folder, exposed=AUTO_CLASSES, processor=processor, overwrite=True)


def tiny_llava_onevision_folder(folder: Path, seed: int = 0) -> Path:
    """A plain transformers LLaVA-OneVision folder with `tiny_llava_model(seed, "none")`'s weights and processor."""
    model, processor = tiny_llava_model(seed, manager_type="none")
    config = transformers.LlavaOnevisionConfig(
        **{k: v for k, v in model.config.to_dict().items() if "manager" not in k}
    )
    plain = transformers.LlavaOnevisionForConditionalGeneration(config).eval()
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


def write_multiple_choice(folder: Path, num_questions: int = 8, layout: str = "jsonl") -> dict[str, Path]:
    """Multiple-choice questions (2-4 choices; answers given as a letter, a lower-case letter or an index, in turn) as
    JSON Lines or a JSON list, and their images (`images/mc_<k>.jpg`, shared by two questions each)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_ids = list(range((num_questions + 1) // 2))
    write_images(folder / "images", image_ids, name="mc_{id}.jpg")
    items = []
    for q in range(num_questions):
        choices = [CHOICE_WORDS[(q + k) % len(CHOICE_WORDS)] for k in range(2 + q % 3)]
        right = q % len(choices)
        answer = ("ABCD"[right], "abcd"[right], right)[q % 3]
        question = ("which animal is shown in the picture ?", "what color is the sky ?")[q % 2]
        items.append(
            {
                "question_id": 100 + q,
                "question": question,
                "image": f"mc_{q // 2}.jpg",
                "choices": choices,
                "answer": answer,
            }
        )
    path = folder / ("questions.jsonl" if layout == "jsonl" else "questions.json")
    path.write_text("\n".join(map(json.dumps, items)) + "\n" if layout == "jsonl" else json.dumps(items))
    return {"questions": path, "images": folder / "images"}
