"""Checkpoints other than the tiny one, built with transformers directly (not feather.tiny),
so that parity tests do not only cover geometry our own builder chose."""

from __future__ import annotations

from pathlib import Path


def build_qwen_llava(out: Path) -> Path:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    from feather.tiny import build_tokenizer

    tok = build_tokenizer()
    image_id = tok.token_to_id("<image>")
    vision = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                              image_size=224, patch_size=16, projection_dim=48)
    text = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=96, intermediate_size=256, num_hidden_layers=20,
                       num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048,
                       initializer_range=0.2, rope_theta=10000.0, use_sliding_window=False,
                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=196, projector_hidden_act="gelu")
    torch.manual_seed(1)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():
            p.mul_(4.0)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        tokenizer=hf_tok, patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
