//! Shard search at 10k and 100k chunks: vector (ANN), filtered vector and BM25
//! latency p50/p99 on one thread, vector QPS on all cores, and ANN recall@10
//! against exact search.
//!
//! Vectors: `--base` real all-MiniLM-L6-v2 embeddings of generated passages,
//! and, to reach 100k without embedding 100k texts, mixtures of two of them plus
//! a little Gaussian noise (renormalised), which stay on the model's manifold far
//! better than uniform random vectors. Queries are fresh mixtures.
//!
//! `--dup F` makes a fraction F of the chunks exact copies of 20 base vectors
//! (boilerplate repeated across documents), the case that hurts HNSW.
//!
//! `--efs 128,256,512` adds, per size, recall of HNSW forced at each candidate
//! list length: mean recall@10 and the fraction of queries whose whole exact top
//! 10 came back (the recall issue's criterion), with p50 latency.
//!
//! `--firsts 1000,5000` adds the staged scan (sign bits, int8, f32) at each
//! first-stage list length, beside the default's own choice.
//!
//! `--quantization int8` builds an int8 collection's shard (codes and sign bits
//! in memory, f32 originals read from sled, no graph): the HNSW rows then run
//! the staged scan the planner uses instead, and the graph plans are left out.
//! Every size prints its vector memory per chunk beside the RSS.
//!
//! Run: cargo test --bench search -- [--sizes 10000,100000] [--base 2000] [--queries 500] [--dup 0.2] [--efs 128,256] [--firsts 1000,5000] [--quantization int8]
mod common;

use std::time::{Duration, Instant};

use common::{arg, models_dir, passage, percentile_ms, sentence, Rng};
use serde_json::json;
use tessera_node::embed::BertEmbedder;
use tessera_node::shard::{ChunkRecord, Condition, DocWrite, Filter, FilterPlan, SearchMode, Shard, ShardQuery};
use tessera_types::{Quantization, SearchSettings};

fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn mixture(rng: &mut Rng, base: &[Vec<f32>]) -> Vec<f32> {
    let a = &base[rng.below(base.len())];
    let b = &base[rng.below(base.len())];
    let w = 0.2 + 0.6 * (rng.below(1000) as f32 / 1000.0);
    normalize(a.iter().zip(b).map(|(x, y)| w * x + (1.0 - w) * y + 0.02 * rng.gaussian()).collect())
}

fn main() {
    let sizes: String = arg("--sizes", "10000,100000".to_string());
    let sizes: Vec<usize> = sizes.split(',').filter_map(|s| s.parse().ok()).collect();
    let base_n: usize = arg("--base", 2000);
    let queries_n: usize = arg("--queries", 500);
    let dup: f64 = arg("--dup", 0.0);
    let efs: String = arg("--efs", String::new());
    let efs: Vec<u32> = efs.split(',').filter_map(|s| s.parse().ok()).collect();
    let firsts: String = arg("--firsts", String::new());
    let firsts: Vec<usize> = firsts.split(',').filter_map(|s| s.parse().ok()).collect();
    let quantization: Quantization =
        arg("--quantization", "none".to_string()).parse().expect("--quantization is none or int8");
    let graph = quantization == Quantization::None;
    let mut memory_rows: Vec<String> = Vec::new();
    let mut sweep_rows: Vec<String> = Vec::new();
    let mut filter_rows: Vec<String> = Vec::new();
    let model =
        BertEmbedder::load(&models_dir().join("all-MiniLM-L6-v2")).expect("model (run scripts/fetch-models.sh)");
    let mut rng = Rng::new(11);
    let base_texts: Vec<String> = (0..base_n).map(|_| passage(&mut rng, 200)).collect();
    let t = Instant::now();
    let mut base = Vec::new();
    for group in base_texts.chunks(32) {
        base.extend(model.embed(group).unwrap());
    }
    eprintln!("embedded {base_n} base passages in {:.1}s", t.elapsed().as_secs_f64());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    println!("quantization {quantization}; usearch HNSW (M=16, ef_construction=128) where there is a graph, cosine, f32, 384 dims; one shard; {threads} CPU threads; {:.0}% duplicated vectors", dup * 100.0);
    println!();
    println!("| chunks | build s | RSS bytes/chunk | insert chunks/s | vector p50 ms (default) | vector p99 ms | vector QPS ({threads} threads) | exact p50 ms | HNSW ef=max(128,8k) p50 ms | filtered (10%) p50 ms | bm25 p50 ms | bm25 p99 ms | recall@10 HNSW ef 64 | recall@10 HNSW scaled ef | recall@10 default |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).cache_capacity(256 << 20).open().unwrap();
        // A path for the graph (unused until close) and, in an int8 shard, the originals' file.
        let ann_path = dir.path().join("ann/bench.usearch");
        let mut shard = Shard::open_as(db.open_tree("bench").unwrap(), 384, quantization, Some(ann_path)).unwrap();
        let mut rng = Rng::new(size as u64);
        let rss_before = rss_bytes();
        let start = Instant::now();
        // Every vector in order, for the exact answers recall is measured against
        // (an int8 shard's own exact search reads sled: the audit path, too slow
        // for hundreds of queries at a million chunks). Its bytes are taken off
        // the RSS below.
        let mut reference: Vec<f32> = Vec::with_capacity(size * 384);
        let mut next = 0usize;
        while next < size {
            let writes: Vec<DocWrite> = (next..(next + 1000).min(size))
                .map(|i| {
                    let doc_id = format!("doc-{i}");
                    let mut metadata = serde_json::Map::new();
                    metadata.insert("bucket".into(), json!(i % 10));
                    metadata.insert("percent".into(), json!(i % 100));
                    metadata.insert("half".into(), json!(i % 2));
                    metadata.insert("quarter".into(), json!(i % 4));
                    let text = base_texts[i % base_texts.len()].clone() + " " + &sentence(&mut rng, 5);
                    let record =
                        ChunkRecord { chunk_id: format!("{doc_id}#0"), doc_id: doc_id.clone(), text, metadata };
                    // `--dup F`: a fraction F of chunks are exact copies of 20 boilerplate vectors.
                    let vector = if (rng.below(1000) as f64) < dup * 1000.0 {
                        base[rng.below(20)].clone()
                    } else {
                        mixture(&mut rng, &base)
                    };
                    reference.extend_from_slice(&vector);
                    DocWrite { doc_id, delete: false, chunks: vec![(record, vector)] }
                })
                .collect();
            next += writes.len();
            shard.apply(writes).unwrap();
        }
        let build_s = start.elapsed().as_secs_f64();
        let insert_rate = size as f64 / build_s;
        let rss_per_chunk =
            rss_bytes().saturating_sub(rss_before).saturating_sub(reference.capacity() * 4) as f64 / size as f64;
        // The exact top-10 scores among the chunks `keep` accepts (by index), best first.
        let truth = |q: &[f32], keep: &(dyn Fn(usize) -> bool + Sync)| -> Vec<f32> {
            let per = size.div_ceil(threads);
            let parts: Vec<Vec<f32>> = std::thread::scope(|sc| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let reference = &reference;
                        sc.spawn(move || {
                            let mut best: Vec<f32> = Vec::with_capacity(11);
                            for i in (t * per)..((t + 1) * per).min(size) {
                                if !keep(i) {
                                    continue;
                                }
                                let v = &reference[i * 384..(i + 1) * 384];
                                let s: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
                                if best.len() < 10 || s > best[best.len() - 1] {
                                    let at = best.partition_point(|x| *x >= s);
                                    best.insert(at, s);
                                    best.truncate(10);
                                }
                            }
                            best
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut all: Vec<f32> = parts.concat();
            all.sort_by(|a, b| b.total_cmp(a));
            all.truncate(10);
            all
        };
        eprintln!("built {size} chunks in {build_s:.0}s");
        memory_rows.push(format!(
            "| {size} | {quantization} | {:.0} | {rss_per_chunk:.0} | {build_s:.0} |",
            shard.vector_memory_bytes() as f64 / size as f64
        ));

        let queries: Vec<Vec<f32>> = (0..queries_n)
            .map(|i| {
                if dup > 0.0 && i % 4 == 0 {
                    // Near the boilerplate: where duplicates crowd the graph.
                    let (a, b) = (&base[rng.below(20)], &base[rng.below(base.len())]);
                    normalize(a.iter().zip(b).map(|(x, y)| 0.7 * x + 0.3 * y + 0.02 * rng.gaussian()).collect())
                } else {
                    mixture(&mut rng, &base)
                }
            })
            .collect();
        let texts: Vec<String> = (0..queries_n).map(|_| sentence(&mut rng, 4)).collect();
        let query = |v: &Vec<f32>, text: &str, mode, filter: Filter| ShardQuery {
            filter,
            ..ShardQuery::new(mode, v.clone(), text, 10)
        };
        // The two vector paths the default chooses between, forced.
        let forced = |v: &Vec<f32>, exact: bool| ShardQuery {
            exact,
            settings: SearchSettings { exact_below: 0, binary_below: 0, ..SearchSettings::default() },
            ..query(v, "", SearchMode::Vector, Filter::default())
        };

        let time = |f: &dyn Fn(usize)| {
            let mut d: Vec<Duration> = (0..queries_n)
                .map(|i| {
                    let t = Instant::now();
                    f(i);
                    t.elapsed()
                })
                .collect();
            d.sort();
            d
        };
        let vector = time(&|i| {
            shard.search(&query(&queries[i], "", SearchMode::Vector, Filter::default())).unwrap();
        });
        // An int8 shard's exact search reads every original from sled (the audit path): not timed.
        let exact_t = if graph {
            time(&|i| {
                shard.search(&forced(&queries[i], true)).unwrap();
            })
        } else {
            Vec::new()
        };
        let hnsw_t = time(&|i| {
            shard.search(&forced(&queries[i], false)).unwrap();
        });
        let bucket = Filter { must: vec![Condition { key: "bucket".into(), values: vec![json!(3)] }] };
        let filtered = time(&|i| {
            shard.search(&query(&queries[i], "", SearchMode::Vector, bucket.clone())).unwrap();
        });
        let bm25 = time(&|i| {
            shard.search(&query(&queries[i], &texts[i], SearchMode::Bm25, Filter::default())).unwrap();
        });
        // Filtered vector search at 1 %, 10 % and 50 % of the chunks, by each plan:
        // the planner's choice, the exact scan over the filter's bitmap (the
        // reference for recall) and filtered HNSW, for the crossover.
        for (label, key, modulo) in
            [("1%", "percent", 100u64), ("10%", "bucket", 10), ("25%", "quarter", 4), ("50%", "half", 2)]
        {
            let filter = Filter { must: vec![Condition { key: key.into(), values: vec![json!(modulo / 2)] }] };
            let planned = |q: &Vec<f32>, plan| ShardQuery {
                filter_plan: plan,
                ..query(q, "", SearchMode::Vector, filter.clone())
            };
            let wanted = modulo / 2;
            let keep = move |i: usize| {
                let value = match key {
                    "percent" => i % 100,
                    "bucket" => i % 10,
                    "quarter" => i % 4,
                    _ => i % 2,
                };
                value as u64 == wanted
            };
            let reference: Vec<Vec<f32>> = queries.iter().map(|q| truth(q, &keep)).collect();
            let plans = [
                ("auto", FilterPlan::Auto),
                ("scan (int8, re-scored)", FilterPlan::Scan),
                ("graph", FilterPlan::Graph),
                ("post-filter", FilterPlan::PostFilter),
                ("staged (sign bits, int8, f32)", FilterPlan::Staged),
                ("exact f32", FilterPlan::Exact),
            ];
            for (plan_name, plan) in plans {
                if !graph && matches!(plan, FilterPlan::Graph | FilterPlan::PostFilter | FilterPlan::Exact) {
                    continue; // no graph: the planner would run the staged scan; exact reads sled
                }
                let t = time(&|i| {
                    shard.search(&planned(&queries[i], plan)).unwrap();
                });
                let (mut hit, mut all) = (0usize, 0usize);
                for (q, exact) in queries.iter().zip(&reference) {
                    let got: Vec<f32> =
                        shard.search(&planned(q, plan)).unwrap().vector.iter().map(|h| h.score).collect();
                    let tenth = exact.last().copied().unwrap_or(f32::MIN);
                    hit += got.iter().filter(|s| **s >= tenth - 1e-5).count().min(exact.len());
                    all += exact.len();
                }
                filter_rows.push(format!(
                    "| {size} | {label} | {plan_name} | {:.2} | {:.2} | {:.4} |",
                    percentile_ms(&t, 50.0),
                    percentile_ms(&t, 99.0),
                    hit as f64 / all.max(1) as f64
                ));
            }
        }
        // Throughput with every core searching.
        let per_thread = queries_n;
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..threads {
                let shard = &shard;
                let queries = &queries;
                s.spawn(move || {
                    for i in 0..per_thread {
                        let q = &queries[(i + th * 7) % queries.len()];
                        shard.search(&query(q, "", SearchMode::Vector, Filter::default())).unwrap();
                    }
                });
            }
        });
        let qps = (per_thread * threads) as f64 / t.elapsed().as_secs_f64();
        // Recall@10 against exact search: HNSW with ef 64 (the old default),
        // HNSW with the scaled candidate list, and the default path.
        // Distance-based recall: a result counts when it scores at least the exact
        // 10th (copies of one vector tie, and which copy comes back is arbitrary).
        let scores =
            |q: &ShardQuery| -> Vec<f32> { shard.search(q).unwrap().vector.into_iter().map(|h| h.score).collect() };
        let found = |got: &[f32], exact: &[f32]| -> usize {
            let tenth = exact.last().copied().unwrap_or(f32::MIN);
            got.iter().filter(|s| **s >= tenth - 1e-5).count().min(exact.len())
        };
        let (mut old, mut scaled, mut default, mut total) = (0usize, 0usize, 0usize, 0usize);
        let exacts: Vec<Vec<f32>> = queries.iter().map(|q| truth(q, &|_| true)).collect();
        for (q, exact) in queries.iter().zip(&exacts).take(200) {
            if graph {
                let a: Vec<f32> = shard.ann_search(q, 10).unwrap().into_iter().map(|(_, s)| s).collect();
                old += found(&a, exact);
            }
            scaled += found(&scores(&forced(q, false)), exact);
            default += found(&scores(&query(q, "", SearchMode::Vector, Filter::default())), exact);
            total += exact.len();
        }
        // The default path and the full int8 scan (forced by a limit above the
        // size) always get a row; HNSW one per `--efs` value.
        let mut lists: Vec<(String, SearchSettings)> = vec![
            ("default".into(), SearchSettings::default()),
            ("full int8 scan".into(), SearchSettings { exact_below: u32::MAX, ..SearchSettings::default() }),
            (
                "staged: sign bits, int8, f32".into(),
                SearchSettings { exact_below: 0, binary_below: u32::MAX, ..SearchSettings::default() },
            ),
        ];
        lists.extend(efs.iter().filter(|_| graph).map(|&ef| {
            (
                ef.to_string(),
                SearchSettings { exact_below: 0, binary_below: 0, hnsw_ef: ef, ..SearchSettings::default() },
            )
        }));
        for (ef, settings) in lists {
            let at = |q: &Vec<f32>| ShardQuery { settings, ..query(q, "", SearchMode::Vector, Filter::default()) };
            let (mut hit, mut all, mut complete) = (0usize, 0usize, 0usize);
            for (q, exact) in queries.iter().zip(&exacts) {
                let n = found(&scores(&at(q)), exact);
                hit += n;
                all += exact.len();
                complete += usize::from(n == exact.len());
            }
            let t = time(&|i| {
                shard.search(&at(&queries[i])).unwrap();
            });
            sweep_rows.push(format!(
                "| {size} | {ef} | {:.4} | {:.4} | {:.2} | {:.2} |",
                hit as f64 / all.max(1) as f64,
                complete as f64 / queries.len().max(1) as f64,
                percentile_ms(&t, 50.0),
                percentile_ms(&t, 99.0)
            ));
        }
        // The staged scan at each first-stage list length.
        for &first in &firsts {
            let (mut hit, mut all, mut complete) = (0usize, 0usize, 0usize);
            for (q, exact) in queries.iter().zip(&exacts) {
                let got: Vec<f32> = shard.staged_search(q, 10, first).into_iter().map(|(_, s)| s).collect();
                let n = found(&got, exact);
                hit += n;
                all += exact.len();
                complete += usize::from(n == exact.len());
            }
            let t = time(&|i| {
                shard.staged_search(&queries[i], 10, first);
            });
            sweep_rows.push(format!(
                "| {size} | staged, first {first} | {:.4} | {:.4} | {:.2} | {:.2} |",
                hit as f64 / all.max(1) as f64,
                complete as f64 / queries.len().max(1) as f64,
                percentile_ms(&t, 50.0),
                percentile_ms(&t, 99.0)
            ));
        }
        let r = |n: usize| n as f64 / total.max(1) as f64;
        println!(
            "| {size} | {build_s:.0} | {rss_per_chunk:.0} | {insert_rate:.0} | {:.2} | {:.2} | {qps:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} |",
            percentile_ms(&vector, 50.0),
            percentile_ms(&vector, 99.0),
            percentile_ms(&exact_t, 50.0),
            percentile_ms(&hnsw_t, 50.0),
            percentile_ms(&filtered, 50.0),
            percentile_ms(&bm25, 50.0),
            percentile_ms(&bm25, 99.0),
            r(old),
            r(scaled),
            r(default),
        );
        // Keep the shard alive until here.
        shard = Shard::open(db.open_tree("empty").unwrap(), 384, None).unwrap();
        drop(shard);
    }
    println!();
    println!("Vector memory (graph with its f32 copies, int8 codes, sign bits) and process RSS per chunk:");
    println!();
    println!("| chunks | quantization | vector bytes/chunk | RSS bytes/chunk | build s |");
    println!("|---:|---|---:|---:|---:|");
    for row in memory_rows {
        println!("{row}");
    }
    println!();
    println!("Filtered vector search, k = 10, {queries_n} queries; recall@10 against the exact f32 scores of the filter's matches:");
    println!();
    println!("| chunks | filter keeps | plan | p50 ms | p99 ms | recall@10 |");
    println!("|---:|---:|---|---:|---:|---:|");
    for row in filter_rows {
        println!("{row}");
    }
    println!();
    println!(
        "The default path, the full int8 scan, and HNSW forced (exact_below 0) at each candidate list length, k = 10, {queries_n} queries:"
    );
    println!();
    println!("| chunks | path (hnsw_ef) | recall@10 | queries with the whole exact top 10 | p50 ms | p99 ms |");
    println!("|---:|---|---:|---:|---:|---:|");
    for row in sweep_rows {
        println!("{row}");
    }
}

/// Resident memory of this process (Linux `/proc/self/statm`), 0 elsewhere.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}
