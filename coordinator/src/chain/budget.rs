//! Fitting a prompt into the model's context window.
//!
//! The policy, in order: the template's own text and the question must fit
//! (else the request is refused); then the newest history turn; then retrieved
//! chunks in rank order, stopping at the first that does not fit; then older
//! history, newest first. Whatever does not fit is left out, never cut in the
//! middle, so the model never sees half a chunk or half a message.

/// What fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    /// Chunks kept: the first `chunks` in rank order.
    pub chunks: usize,
    /// History kept: messages from this index on.
    pub history_from: usize,
    /// Tokens used by the kept parts, by the counts given.
    pub tokens: usize,
}

/// The fixed part of a prompt alone is larger than the context leaves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the question and prompt template need {fixed} tokens, more than the {available} the model's context leaves")]
pub struct DoesNotFit {
    /// Tokens of the template with the question.
    pub fixed: usize,
    /// Tokens the context window leaves after the answer.
    pub available: usize,
}

/// Fits parts into `available` tokens; `history` holds per-message counts,
/// oldest first, and `last_turn` how many of the newest messages form the
/// newest turn.
pub fn fit(
    available: usize,
    fixed: usize,
    chunks: &[usize],
    history: &[usize],
    last_turn: usize,
) -> Result<Fitted, DoesNotFit> {
    if fixed > available {
        return Err(DoesNotFit { fixed, available });
    }
    let mut used = fixed;
    let mut history_from = history.len();
    let last_turn = last_turn.min(history.len());
    let newest: usize = history[history.len() - last_turn..].iter().sum();
    if last_turn > 0 && used + newest <= available {
        used += newest;
        history_from = history.len() - last_turn;
    }
    let mut kept = 0;
    for &c in chunks {
        if used + c > available {
            break;
        }
        used += c;
        kept += 1;
    }
    if history_from == history.len() - last_turn {
        while history_from > 0 && used + history[history_from - 1] <= available {
            history_from -= 1;
            used += history[history_from];
        }
    }
    Ok(Fitted { chunks: kept, history_from, tokens: used })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_first_then_newest_turn_then_chunks_then_older_history() {
        // Everything fits.
        assert_eq!(
            fit(100, 10, &[10, 10], &[5, 5, 5, 5], 2).unwrap(),
            Fitted { chunks: 2, history_from: 0, tokens: 50 }
        );
        // Chunks win over older history; the newest turn wins over chunks.
        assert_eq!(
            fit(40, 10, &[10, 10], &[5, 5, 5, 5], 2).unwrap(),
            Fitted { chunks: 2, history_from: 2, tokens: 40 }
        );
        assert_eq!(
            fit(30, 10, &[10, 10], &[5, 5, 5, 5], 2).unwrap(),
            Fitted { chunks: 1, history_from: 2, tokens: 30 }
        );
        // Rank order is kept: a later small chunk does not jump a big one.
        assert_eq!(fit(25, 10, &[20, 1], &[], 0).unwrap(), Fitted { chunks: 0, history_from: 0, tokens: 10 });
        // No history.
        assert_eq!(fit(25, 10, &[5, 5], &[], 0).unwrap(), Fitted { chunks: 2, history_from: 0, tokens: 20 });
        // A newest turn that does not fit is dropped with all older history.
        assert_eq!(fit(20, 10, &[5], &[1, 50], 1).unwrap(), Fitted { chunks: 1, history_from: 2, tokens: 15 });
        assert!(fit(9, 10, &[], &[], 0).unwrap_err().to_string().contains("need 10 tokens"));
    }
}
