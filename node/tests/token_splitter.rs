//! The token splitter with the embedder's real tokenizer: windows of at most
//! `chunk_size` word pieces, exact byte slices, Chinese included.
mod common;

use tessera_node::chunking::{Splitter, TokenSplitter};
use tessera_node::embed::BertEmbedder;

#[test]
fn windows_of_word_pieces_on_char_boundaries() {
    let Some(dir) = common::minilm_dir() else {
        return;
    };
    let model = BertEmbedder::load(&dir).unwrap();
    let text = "向量数据库用于语义检索和相似度搜索。".repeat(20)
        + " Retrieval-augmented generation splits long documents. ".repeat(20).as_str();
    let splitter = TokenSplitter::new(model.tokenizer().clone(), 64, 16).unwrap();
    let spans = splitter.split(&text).unwrap();
    assert!(spans.len() >= 5, "{}", spans.len());
    for s in &spans {
        let chunk = &text[s.start..s.end];
        let ids = model.encode(&[chunk.to_string()]).unwrap()[0].get_ids().len();
        assert!(ids <= 64 + 2, "{ids} word pieces (+ [CLS] [SEP])");
    }
    assert_eq!(spans[0].start, 0);
    assert_eq!(spans.last().unwrap().end, text.trim_end().len());
    // Overlap: each window starts before the previous one ends.
    assert!(spans.windows(2).all(|w| w[1].start < w[0].end));
    assert!(TokenSplitter::new(model.tokenizer().clone(), 8, 8).is_err());
}
