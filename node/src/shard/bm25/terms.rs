//! Index terms: lower-cased Unicode words (UAX #29); runs of CJK characters,
//! which have no spaces between words, become single characters plus
//! character bigrams, so Chinese and Japanese queries match without a
//! dictionary-based segmenter.
use unicode_segmentation::UnicodeSegmentation;

/// Splits text into index terms (see the module documentation).
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // UAX #29 makes every ideograph a word of its own; adjacent ones are joined
    // back into runs here so that bigrams can be formed.
    let mut run: Vec<char> = Vec::new();
    let mut run_end = 0usize;
    for (start, word) in text.unicode_word_indices() {
        let lower = word.to_lowercase();
        let cjk = lower.chars().all(is_cjk);
        if !cjk || start != run_end {
            flush_cjk(&mut run, &mut out);
        }
        if cjk {
            run.extend(lower.chars());
            run_end = start + word.len();
        } else if lower.chars().any(is_cjk) {
            // Mixed word such as "gpu内存": latin part whole, CJK part as a run.
            let mut latin = String::new();
            for c in lower.chars() {
                if is_cjk(c) {
                    if !latin.is_empty() {
                        out.push(std::mem::take(&mut latin));
                    }
                    run.push(c);
                } else {
                    flush_cjk(&mut run, &mut out);
                    latin.push(c);
                }
            }
            flush_cjk(&mut run, &mut out);
            if !latin.is_empty() {
                out.push(latin);
            }
        } else {
            out.push(lower);
        }
    }
    flush_cjk(&mut run, &mut out);
    out
}

/// Emits a CJK run as unigrams and bigrams.
fn flush_cjk(run: &mut Vec<char>, out: &mut Vec<String>) {
    for (i, c) in run.iter().enumerate() {
        out.push(c.to_string());
        if let Some(next) = run.get(i + 1) {
            out.push(format!("{c}{next}"));
        }
    }
    run.clear();
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF | 0x20000..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_runs_become_unigrams_and_bigrams() {
        assert_eq!(terms("Rust 索引"), vec!["rust", "索", "索引", "引"]);
        assert_eq!(terms("GPU内存"), vec!["gpu", "内", "内存", "存"]);
        assert_eq!(terms("复制，目录"), vec!["复", "复制", "制", "目", "目录", "录"]);
    }
}
