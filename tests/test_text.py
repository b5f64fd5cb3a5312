from serving.core.text import EncodingConfig, clean_text, encode, tokenizer_from_file, visible_text
from training.config import BUNDLED_MODEL, resolve_checkpoint

TOKENIZER = tokenizer_from_file(f"{resolve_checkpoint(BUNDLED_MODEL)}/tokenizer.json")
CLS, SEP = TOKENIZER.token_to_id("[CLS]"), TOKENIZER.token_to_id("[SEP]")


def test_clean_text_removes_br_tags_and_collapses_whitespace():
    assert clean_text("Great film.<br /><br />Loved it\t !<BR>") == "Great film. Loved it !"
    assert clean_text("  \n ") == ""


def test_short_text_is_not_truncated_and_gets_special_tokens():
    (ids,) = encode(["a good movie"], TOKENIZER, EncodingConfig(max_length=16))
    words = TOKENIZER.encode("a good movie", add_special_tokens=False).ids
    assert ids == [CLS, *words, SEP]


def test_head_tail_keeps_start_and_end():
    text = " ".join(f"w{i}" for i in range(400))
    full = TOKENIZER.encode(text, add_special_tokens=False).ids
    config = EncodingConfig(max_length=34, truncation="head_tail", head_fraction=0.25)
    (ids,) = encode([text], TOKENIZER, config)
    assert len(ids) == 34
    assert ids[1:9] == full[:8]  # 25% of the 32-token budget from the head
    assert ids[9:-1] == full[-24:]  # the rest from the tail


def test_head_and_tail_strategies():
    text = " ".join(f"w{i}" for i in range(400))
    full = TOKENIZER.encode(text, add_special_tokens=False).ids
    (head,) = encode([text], TOKENIZER, EncodingConfig(max_length=10, truncation="head"))
    (tail,) = encode([text], TOKENIZER, EncodingConfig(max_length=10, truncation="tail"))
    assert head[1:-1] == full[:8] and tail[1:-1] == full[-8:]


def test_training_and_serving_tokenizers_agree():
    from serving.core.text import without_truncation
    from training.modeling import load_tokenizer as load_hf_tokenizer

    texts = ["It was <br />dreadful.", "x " * 1000]
    hf = without_truncation(load_hf_tokenizer(BUNDLED_MODEL).backend_tokenizer)
    assert encode(texts, hf, EncodingConfig()) == encode(texts, TOKENIZER, EncodingConfig())


def test_visible_text_is_what_the_encoding_keeps():
    config = EncodingConfig(max_length=34, truncation="head_tail", head_fraction=0.25)
    assert visible_text("a good<br />movie", TOKENIZER, config) == ("a good movie", False)
    text = " ".join(f"word{i}" for i in range(400))
    seen, truncated = visible_text(text, TOKENIZER, config)
    assert truncated and seen.startswith("word0") and seen.endswith("word399")
    (ids,) = encode([text], TOKENIZER, config)
    assert TOKENIZER.encode(seen, add_special_tokens=False).ids == ids[1:-1]  # exactly the kept tokens
