//! `gpuctl plan new`: a commented template holding every field of the route card and the
//! GPU plan. Fields only the engineer can answer are left empty, so `plan check` refuses
//! the template until they are filled and names each one.

use super::types::Route;

pub fn template(route: Route) -> String {
    match route {
        Route::LocalCpu => LOCAL_CPU.to_string(),
        Route::FreeColab => FREE_COLAB.to_string(),
        Route::RentedGpu => RENTED_GPU.to_string(),
    }
}

const LOCAL_CPU: &str = r#"# gpu_plan.toml: one bounded experiment, reviewed in git before anything runs.
# `gpuctl plan check` validates it; `gpuctl plan show` renders it as the route card.
schema = 1

[plan]
name = "local-smoke"                       # [a-z0-9-], names the session and its evidence
goal = "prove the open-source LLM loop (environment, model, prompt, output, eval, stop) on this machine"
route = "local_cpu"                        # local_cpu | free_colab | rented_gpu
question = "Can my environment load a model and generate text?"
why = "I will use local_cpu because it costs nothing, needs no GPU or SSH, and keeps data on this machine"
can_prove = "the code path, the API, the eval harness and the stop path"
cannot_prove = "7B quality, GPU memory, throughput under load"
privacy_level = "internal"                 # public | internal | private
# owner = "ml-platform"                    # who answers for this session in audits

[model]
id = "HuggingFaceTB/SmolLM2-135M-Instruct"
runtime = "candle"                         # candle | vllm | sglang | command
path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"   # weights; `scripts/fetch-model.sh` puts them here
args = []

[instance]
provider = "local"                         # this machine
gpus = 0

[stop]
max_duration = "15m"                       # expected_runtime_limit: the hard stop counts from `up`
grace = "30s"                              # evidence is collected in this window before the stop
on_stop = "terminate"
after_eval = true                          # stop as soon as the fixed eval set has run

[fallback]
route = "none"                             # fallback_route; "none" is allowed only on local_cpu

[access]
ports = [{ local = 8000, remote = 8000 }]  # ports_to_open: 127.0.0.1 on both ends

[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "process_exited"          # the agent has exited and its port is closed

[[eval.case]]
id = "capital"
prompt = "What is the capital of France? Answer in one word."
expect_regex = "(?i)paris|france"
max_tokens = 32

[[eval.case]]
id = "arithmetic"
prompt = "What is 2 + 2? Answer with a number."
expect_regex = "\\d"
max_tokens = 16
"#;

const FREE_COLAB: &str = r#"# gpu_plan.toml for the free Colab route: opportunistic, a GPU may or may not be assigned.
schema = 1

[plan]
name = "colab-notebook-check"
goal = "run the same loop in a hosted notebook"
route = "free_colab"
question = "Can I run the same notebook on a temporary hosted machine?"
why = "I will use free_colab because it costs nothing and a GPU may be available, and the data is public"
can_prove = "the notebook path and a short evaluation"
cannot_prove = "guaranteed GPU availability, long jobs, serving"
privacy_level = "public"                   # private is refused on free_colab

[model]
id = "HuggingFaceTB/SmolLM2-135M-Instruct"
runtime = "command"                        # the notebook runs transformers itself
command = ["python", "run_local_llm.py"]

[instance]
provider = "local"                         # nothing is rented: gpuctl writes the notebook

[stop]
max_duration = "1h"                        # the notebook checks this before each step
grace = "2m"

[fallback]
route = "local_cpu"                        # what to do when no GPU is assigned or the runtime resets

[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl"]
shutdown_proof = "process_exited"

[[eval.case]]
id = "capital"
prompt = "What is the capital of France?"
expect_contains = "Paris"
max_tokens = 32
"#;

const RENTED_GPU: &str = r#"# gpu_plan.toml for a rented GPU. If the stop, the fallback or the evidence is empty,
# do not rent a GPU yet: `gpuctl plan check` refuses this file until every empty field
# below is filled, and names each one.
schema = 1

[plan]
name = "rented-gpu-smoke"
goal = ""                                  # one bounded question, e.g. "prove vLLM serving for one small project"
route = "rented_gpu"
question = "Can this model serve requests with known VRAM, latency and shutdown?"
why = ""                                   # "I will use rented_gpu because <constraints: VRAM, SSH, budget...>"
can_prove = ""                             # "This route can prove ..."
cannot_prove = ""                          # "This route cannot prove ... yet"
privacy_level = "internal"                 # public | internal | private
# owner = "ml-platform"

[model]
id = "Qwen/Qwen2.5-0.5B-Instruct"          # selected_model
runtime = "vllm"                           # candle | vllm | sglang | command
args = ["--max-model-len", "4096"]

[instance]
provider = "ssh"                           # ssh (a host you rent) | lambda | runpod | vast
host = ""                                  # the host's address
port = 22
user = "ubuntu"
# host_key = "SHA256:..."                  # pinned fingerprint; else ~/.ssh/known_hosts must know it
# instance_type = "gpu_1x_a10"             # cloud providers
# region = "us-east-1"                     # cloud providers
gpus = 1
vram_gb = 24                               # instance_vram
disk_gb = 100                              # disk
hourly_price_usd = 0.75                    # ssh: what the host costs you; clouds quote it at launch

[budget]
hourly_usd = 1.10                          # hourly_budget: offers above it are refused
max_total_usd = 5.00                       # the session stops before spending more

[stop]
max_duration = "2h"                        # hard stop, counted from `up` (or hard_stop_time = "...Z")
grace = "2m"                               # evidence is collected in this window before the stop
on_stop = "terminate"                      # terminate | stop | command
after_eval = false
idle = "30m"                               # also stop after 30 minutes without an API request

[fallback]
route = "local_cpu"                        # fallback_route
if_oom = { model = "Qwen/Qwen2.5-0.5B-Instruct", args = ["--max-model-len", "2048"] }   # fallback_if_oom
if_no_capacity = []                        # e.g. ["lambda:gpu_1x_a10:us-west-1"], tried in order

[access]
method = "ssh_key"                         # access_method: the only one accepted
identity_file = "~/.ssh/id_ed25519"        # a path, never a key; ssh-agent also works
ports = [{ local = 8000, remote = 8000 }]  # ports_to_open: 127.0.0.1 on both ends
public_ports = []                          # each needs { port, reason } and `up --allow-public-ports`

[evidence]
copy_back = ["environment_report.txt", "first_run.md", "eval_results.csv", "requests.jsonl", "gpu_metrics.csv"]
shutdown_proof = "process_exited"          # ssh: process_exited; clouds: provider_terminated

[[eval.case]]
id = "capital"
prompt = "What is the capital of France?"
expect_contains = "Paris"
max_tokens = 32
max_latency_ms = 5000

[notify]
webhook_env = "GPUCTL_WEBHOOK_URL"         # alerts go to the URL in this variable (never the URL here)
"#;
