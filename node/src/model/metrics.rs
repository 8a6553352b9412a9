//! The model group's metrics, registered with zero values when the group
//! starts, so a fresh dashboard shows zeros (not "No data") before the first
//! request, and a `rate()` has a starting point. docs/metrics.md lists them.
use super::engine::FinishReason;

/// Registers every model metric of the group `model` (its `model` label) at
/// zero; `weight_bytes` is rank 0's. Every series carries the label, so
/// several groups in one process keep their own.
pub(super) fn register_at_zero(model: &str, weight_bytes: usize) {
    let model = model.to_string();
    for name in [
        "tessera_model_prompt_tokens_total",
        "tessera_model_generated_tokens_total",
        "tessera_model_prefix_cache_hits_total",
        "tessera_model_prefix_cache_misses_total",
        "tessera_model_prefix_cache_tokens_reused_total",
    ] {
        metrics::counter!(name, "model" => model.clone()).absolute(0);
    }
    for cached in ["true", "false"] {
        metrics::counter!("tessera_model_constraint_compiles_total", "cached" => cached, "model" => model.clone())
            .absolute(0);
    }
    for finish in [FinishReason::Length, FinishReason::Stop, FinishReason::Eos] {
        metrics::counter!("tessera_model_requests_total", "finish" => finish.as_str(), "model" => model.clone())
            .absolute(0);
    }
    for name in [
        "tessera_model_waiting_requests",
        "tessera_model_running_requests",
        "tessera_model_kv_cache_sequences",
        "tessera_model_kv_cache_tokens",
        "tessera_model_kv_cache_bytes",
        "tessera_model_prefix_cache_entries",
        "tessera_model_prefix_cache_bytes",
    ] {
        metrics::gauge!(name, "model" => model.clone()).set(0.0);
    }
    metrics::gauge!("tessera_model_weight_bytes", "model" => model.clone()).set(weight_bytes as f64);
    // Histograms appear with zero counts once registered.
    for name in [
        "tessera_model_step_duration_seconds",
        "tessera_model_step_sequences",
        "tessera_model_time_to_first_token_seconds",
        "tessera_model_constraint_seconds",
        "tessera_model_constraint_compile_seconds",
    ] {
        let _ = metrics::histogram!(name, "model" => model.clone());
    }
}
