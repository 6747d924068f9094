//! The one thread that owns the model. HTTP handlers send it typed jobs over a channel
//! and read generated text back over another, so requests queue instead of being dropped
//! and the model never sits behind a lock on the async runtime.

mod candle;
mod decoder;
mod native;
mod safetensors;
mod template;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

pub use candle::CandleModel;
pub use native::Level as KernelLevel;

/// Jobs waiting beyond this make senders wait (back-pressure), they are not dropped.
const QUEUE_DEPTH: usize = 256;

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
}

#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug)]
pub enum GenEvent {
    /// The prompt was accepted; generation starts.
    Started {
        prompt_tokens: usize,
    },
    Delta(String),
    Done {
        finish_reason: FinishReason,
        completion_tokens: usize,
    },
    Failed(EngineError),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("this model's maximum context length is {context} tokens; the prompt has {prompt_tokens} and max_tokens asks for {max_tokens} more")]
    ContextExceeded {
        context: usize,
        prompt_tokens: usize,
        max_tokens: usize,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("generation failed: {0}")]
    Internal(String),
    #[error("the agent is stopping")]
    Stopping,
}

pub struct Job {
    pub prompt: Prompt,
    pub params: GenParams,
    pub events: mpsc::Sender<GenEvent>,
}

/// What a loaded model offers the engine loop.
pub trait Backend: Send + 'static {
    fn context_length(&self) -> usize;
    /// Called first on the engine's own thread, which is not the one that loaded the model:
    /// a CUDA context is current per thread, and candle's quantized kernels do not make it
    /// current themselves (without this, a GGUF served on a GPU failed its first request with
    /// CUDA_ERROR_INVALID_CONTEXT).
    fn on_engine_thread(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
    /// Render the prompt (chat template for chat) and tokenize it.
    fn encode(&self, prompt: &Prompt) -> Result<(String, Vec<u32>), EngineError>;
    /// One short generation, so that the first request does not pay for kernel loading
    /// (on CUDA the driver compiles the kernels at first use).
    fn warm_up(&mut self) {
        if let Ok((_, ids)) = self.encode(&Prompt::Text("hello".into())) {
            let params = GenParams {
                max_tokens: 1,
                temperature: 0.0,
                top_p: None,
                seed: 0,
                stop: Vec::new(),
            };
            let _ = self.generate(&ids, &params, &mut |_| true);
        }
    }
    /// Generate; `emit` gets each new piece of text and returns false to stop early.
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenParams,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(FinishReason, usize), EngineError>;
}

enum Work {
    Job(Job),
    Stop,
}

#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Work>,
    pub context_length: usize,
    stop: Arc<AtomicBool>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Queue a job; waits while the queue is full. Fails only when the engine has stopped.
    pub async fn submit(&self, job: Job) -> Result<(), EngineError> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(EngineError::Stopping);
        }
        self.jobs
            .send(Work::Job(job))
            .await
            .map_err(|_| EngineError::Stopping)
    }

    /// Stop generating (a running generation ends at its next token), free the model, and
    /// wait up to `wait` for the engine thread: the model's memory (a GPU's too) is released
    /// by its owner before the process exits.
    pub async fn shutdown(&self, wait: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(wait, self.jobs.send(Work::Stop)).await;
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let deadline = std::time::Instant::now() + wait;
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

/// Start the engine thread over a loaded backend.
pub fn spawn(mut backend: impl Backend) -> EngineHandle {
    let (tx, mut rx) = mpsc::channel::<Work>(QUEUE_DEPTH);
    let context_length = backend.context_length();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let ready = backend.on_engine_thread();
            while let Some(Work::Job(job)) = rx.blocking_recv() {
                if let Err(e) = &ready {
                    let _ = job.events.blocking_send(GenEvent::Failed(e.clone()));
                    continue;
                }
                if flag.load(Ordering::SeqCst) {
                    let _ = job
                        .events
                        .blocking_send(GenEvent::Failed(EngineError::Stopping));
                    continue;
                }
                run_job(&mut backend, job, &flag);
            }
            drop(backend);
        })
        .map_err(|e| eprintln!("cannot start the engine thread: {e}"))
        .ok();
    EngineHandle {
        jobs: tx,
        context_length,
        stop,
        thread: Arc::new(Mutex::new(thread)),
    }
}

fn run_job(backend: &mut impl Backend, job: Job, stop: &AtomicBool) {
    let send = |ev: GenEvent| job.events.blocking_send(ev).is_ok();
    let (_text, tokens) = match backend.encode(&job.prompt) {
        Ok(t) => t,
        Err(e) => {
            send(GenEvent::Failed(e));
            return;
        }
    };
    let context = backend.context_length();
    if tokens.len() + job.params.max_tokens > context {
        send(GenEvent::Failed(EngineError::ContextExceeded {
            context,
            prompt_tokens: tokens.len(),
            max_tokens: job.params.max_tokens,
        }));
        return;
    }
    if !send(GenEvent::Started {
        prompt_tokens: tokens.len(),
    }) {
        return; // the client went away while queued
    }
    let mut emit = |piece: &str| {
        !stop.load(Ordering::SeqCst)
            && job
                .events
                .blocking_send(GenEvent::Delta(piece.to_string()))
                .is_ok()
    };
    match backend.generate(&tokens, &job.params, &mut emit) {
        Ok((finish_reason, completion_tokens)) => {
            send(GenEvent::Done {
                finish_reason,
                completion_tokens,
            });
        }
        Err(e) => {
            send(GenEvent::Failed(e));
        }
    }
}

/// Load the model named in the config: a GGUF file, or a safetensors folder.
pub fn load(path: &Path) -> anyhow::Result<CandleModel> {
    CandleModel::load(path)
}

/// Cut `text` at the first stop string; returns the kept text and whether one was found.
pub fn apply_stop<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    let cut = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match cut {
        Some(i) => (&text[..i], true),
        None => (text, false),
    }
}

/// How much of `text` can be emitted without risking that a stop string begins in it.
pub fn safe_prefix_len(text: &str, stops: &[String]) -> usize {
    let hold = stops
        .iter()
        .map(|s| s.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let mut end = text.len().saturating_sub(hold);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_and_hold_back() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(apply_stop("hello END world", &stops), ("hello ", true));
        assert_eq!(apply_stop("hello", &stops), ("hello", false));
        assert_eq!(safe_prefix_len("hello EN", &stops), 6);
        assert_eq!(safe_prefix_len("héé", &["abc".to_string()]), 3);
    }
}
