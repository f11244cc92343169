// tritonctl native endpoint router: a Triton backend (libtriton_tritonctl_router.so) that
// sends each request to one of several model versions by weight.
//
// While traffic is split, the endpoint model is this router (its library is copied into
// <repo>/<endpoint>/1/). Every request is handed on to its target (model, version) with Triton's in-process API (TRITONSERVER_
// ServerInferAsync): the request's own input buffers are passed on without a copy, and the
// target's answer (outputs, or its error) comes back to the caller. A target's error is
// returned as an error, prefixed "endpoint target MODEL:VERSION:"; there is no fallback to
// another target. Execute only hands requests on and returns; each answer is sent from
// the target's completion callback, so one router instance keeps any number of requests
// in flight and Triton's per-version statistics see every request as its own.
//
// Streaming (decoupled) targets: when the targets answer a request with a stream of
// responses (model_transaction_policy decoupled), tritonctl makes the router decoupled
// too, and it passes every response of the target on to the caller as it comes, the
// final flag with the last; a target's error response is passed on in its place in the
// stream.
//
// Routes: a text file written (temp file + rename) by tritonctl, found through the config
// parameter "tritonctl.routes" (relative to this model's folder, or absolute):
//
//     tritonctl-routes 1
//     generation 7
//     sticky_parameter user          ("-" for none)
//     use_correlation_id 0
//     target MODEL VERSION WEIGHT    (one line per target, in order)
//
// The file is stat-ed at most every 100 ms and read again only when its inode, size or
// mtime changed; an unreadable file keeps the routes in force (and is logged).
//
// Cancellation: a client's cancellation of a request (a gRPC cancel or deadline) is passed
// on to the request handed to its target, checked every 10 ms by one thread for all
// routers, so a target drops it from its queue as it would a direct call; a request
// already cancelled when it reaches the router is answered CANCELLED at once.
//
// Sequences: for stateful targets (sequence_batching) tritonctl sets the parameter
// "tritonctl.sequences". A request that starts a sequence (correlation id and the START
// flag) is routed as any other, and every later request of that sequence goes to the same
// target until its END, whatever the weights are by then: the sequence's state lives in
// the version that saw its start. A request of a sequence whose start this router did not
// see (one that began before the router was put in the path, or before it was reloaded)
// goes to the first target listed (in a rollout, the version the endpoint was pinned to);
// a target whose sequence batcher does not know the sequence refuses it at once, before
// anything runs ("must specify the START flag"), and the next target listed is tried, so
// the request reaches the version that has the sequence, which is remembered. A sequence
// idle for longer than "tritonctl.sequence_idle_us" is forgotten (its target has dropped
// it by then too).
//
// Choice of target: with a sticky key (the request parameter named in the routes, else
// "correlation:<id>" when use_correlation_id; a parameter of any type, as its text: see
// DoubleKeyText) the key's stable hash picks a point in
// [0, total weight); without one the point is random. Targets own consecutive ranges in
// the order listed. The hash (FNV-1a 64 with the splitmix64 finalizer, top 53 bits) is the
// one the Python-backend router's stable_point computes, so every process agrees.

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "triton_api.h"

#define ROUTER_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr const char* kRoutesParameter = "tritonctl.routes";
constexpr const char* kRunLengthParameter = "tritonctl.run_length";
constexpr const char* kRunWindowParameter = "tritonctl.run_window_us";
constexpr const char* kRunIdleWindowParameter = "tritonctl.run_idle_window_us";
constexpr const char* kSequencesParameter = "tritonctl.sequences";
constexpr const char* kSequenceIdleParameter = "tritonctl.sequence_idle_us";
constexpr uint64_t kCheckIntervalNs = 100 * 1000 * 1000;
constexpr std::chrono::milliseconds kCancelCheckInterval{10};

uint64_t
NowNs()
{
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void
Log(TRITONSERVER_LogLevel level, const std::string& message)
{
  if (!TRITONSERVER_LogIsEnabled(level)) {
    return;
  }
  std::string text = "tritonctl router: " + message;
  TRITONSERVER_Error* err = TRITONSERVER_LogMessage(level, __FILE__, __LINE__, text.c_str());
  if (err != nullptr) {
    TRITONSERVER_ErrorDelete(err);
  }
}

// Takes ownership of err; returns its message.
std::string
Consume(TRITONSERVER_Error* err)
{
  std::string message = TRITONSERVER_ErrorMessage(err);
  TRITONSERVER_ErrorDelete(err);
  return message;
}

TRITONSERVER_Error*
Error(TRITONSERVER_Error_Code code, const std::string& message)
{
  return TRITONSERVER_ErrorNew(code, ("tritonctl router: " + message).c_str());
}

// ----------------------------------------------------------------------------- routes

struct Target {
  std::string model;
  int64_t version = 0;
  double weight = 0.0;
  std::string label;  // "model:version"
};

struct Routes {
  std::vector<Target> targets;
  std::vector<double> bounds;  // cumulative weights
  double total = 0.0;
  double largest = 0.0;        // the largest weight
  int single = -1;             // the only target with a positive weight, or -1
  std::string sticky_parameter;
  bool use_correlation_id = false;
  int64_t generation = 0;

  bool sticky() const { return !sticky_parameter.empty() || use_correlation_id; }

  const Target& At(double point) const { return targets[IndexAt(point)]; }

  size_t IndexAt(double point) const
  {
    size_t lo = 0;
    size_t hi = bounds.size();
    while (lo < hi) {  // first bound > point
      size_t mid = (lo + hi) / 2;
      if (bounds[mid] <= point) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (lo >= targets.size()) {
      lo = targets.size() - 1;
    }
    return lo;
  }
};

bool
ParseRoutes(const std::string& text, Routes* out, std::string* error)
{
  std::istringstream lines(text);
  std::string line;
  bool header = false;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string key;
    if (!(words >> key) || key[0] == '#') {
      continue;
    }
    if (key == "tritonctl-routes") {
      int format = 0;
      if (!(words >> format) || format != 1) {
        *error = "unknown routes format";
        return false;
      }
      header = true;
    } else if (key == "generation") {
      words >> out->generation;
    } else if (key == "sticky_parameter") {
      std::string name;
      words >> name;
      out->sticky_parameter = (name == "-") ? "" : name;
    } else if (key == "use_correlation_id") {
      int flag = 0;
      words >> flag;
      out->use_correlation_id = flag != 0;
    } else if (key == "target") {
      Target target;
      if (!(words >> target.model >> target.version >> target.weight)) {
        *error = "malformed target line: " + line;
        return false;
      }
      if (!(target.weight >= 0.0) || target.weight > 1e300) {
        *error = "invalid weight in: " + line;
        return false;
      }
      target.label = target.model + ":" + std::to_string(target.version);
      out->total += target.weight;
      out->largest = std::max(out->largest, target.weight);
      out->bounds.push_back(out->total);
      out->targets.push_back(target);
    }
  }
  if (!header) {
    *error = "not a tritonctl routes file";
    return false;
  }
  if (out->targets.empty()) {
    *error = "routes have no targets";
    return false;
  }
  if (!(out->total > 0.0)) {
    *error = "the weights of the routes add up to 0";
    return false;
  }
  int positive = 0;
  for (size_t i = 0; i < out->targets.size(); ++i) {
    if (out->targets[i].weight > 0.0) {
      ++positive;
      out->single = static_cast<int>(i);
    }
  }
  if (positive != 1) {
    out->single = -1;
  }
  return true;
}

uint64_t
StableHash(const std::string& key)
{
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 30;  // splitmix64 finalizer
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

double
UnitFromBits(uint64_t bits)
{
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

double
RandomUnit()
{
  thread_local std::mt19937_64 rng(
      std::random_device{}() ^ std::hash<std::thread::id>{}(std::this_thread::get_id()));
  return UnitFromBits(rng());
}

class RoutesFile {
 public:
  explicit RoutesFile(std::string path) : path_(std::move(path)) {}

  // Reads the file; an error here fails the model load.
  TRITONSERVER_Error* Load()
  {
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) {
      return Error(TRITONSERVER_ERROR_NOT_FOUND, "cannot read routes " + path_);
    }
    std::string error;
    auto routes = Read(st, &error);
    if (routes == nullptr) {
      return Error(TRITONSERVER_ERROR_INVALID_ARG, "routes " + path_ + ": " + error);
    }
    std::lock_guard<std::mutex> lock(mu_);
    current_ = routes;
    return nullptr;
  }

  std::shared_ptr<const Routes> Get()
  {
    uint64_t now = NowNs();
    uint64_t next = next_check_ns_.load(std::memory_order_relaxed);
    if (now >= next &&
        next_check_ns_.compare_exchange_strong(next, now + kCheckIntervalNs)) {
      Refresh();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return current_;
  }

  const std::string& path() const { return path_; }

 private:
  std::shared_ptr<const Routes> Read(const struct stat& st, std::string* error)
  {
    std::ifstream in(path_);
    if (!in) {
      *error = "cannot open";
      return nullptr;
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    auto routes = std::make_shared<Routes>();
    if (!ParseRoutes(buffer.str(), routes.get(), error)) {
      return nullptr;
    }
    ino_ = st.st_ino;
    size_ = st.st_size;
    mtime_ns_ = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    return routes;
  }

  void Refresh()
  {
    // only the thread that won the compare-exchange in Get() gets here
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) {
      Log(TRITONSERVER_LOG_ERROR, "cannot stat routes " + path_ + "; keeping the routes in force");
      return;
    }
    int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    if (st.st_ino == ino_ && st.st_size == size_ && mtime == mtime_ns_) {
      return;
    }
    std::string error;
    auto routes = Read(st, &error);
    if (routes == nullptr) {
      Log(TRITONSERVER_LOG_ERROR,
          "cannot read routes " + path_ + " (" + error + "); keeping the routes in force");
      return;
    }
    Log(TRITONSERVER_LOG_INFO,
        "routes generation " + std::to_string(routes->generation) + " in force");
    std::lock_guard<std::mutex> lock(mu_);
    current_ = routes;
  }

  const std::string path_;
  std::mutex mu_;
  std::shared_ptr<const Routes> current_;
  std::atomic<uint64_t> next_check_ns_{0};
  ino_t ino_ = 0;
  off_t size_ = 0;
  int64_t mtime_ns_ = 0;
};

// ----------------------------------------------------------------------------- state

TRITONSERVER_ResponseAllocator* g_allocator = nullptr;

TRITONSERVER_Error*
AllocCpu(
    TRITONSERVER_ResponseAllocator*, const char*, size_t byte_size, TRITONSERVER_MemoryType,
    int64_t, void*, void** buffer, void** buffer_userp, TRITONSERVER_MemoryType* actual_type,
    int64_t* actual_type_id)
{
  *actual_type = TRITONSERVER_MEMORY_CPU;
  *actual_type_id = 0;
  *buffer_userp = nullptr;
  *buffer = nullptr;
  if (byte_size > 0) {
    *buffer = std::malloc(byte_size);
    if (*buffer == nullptr) {
      return Error(TRITONSERVER_ERROR_UNAVAILABLE, "out of memory for a target's output");
    }
  }
  return nullptr;
}

TRITONSERVER_Error*
ReleaseCpu(
    TRITONSERVER_ResponseAllocator*, void* buffer, void*, size_t, TRITONSERVER_MemoryType,
    int64_t)
{
  std::free(buffer);
  return nullptr;
}

struct ModelState {
  TRITONSERVER_Server* server = nullptr;
  std::string name;
  std::unique_ptr<RoutesFile> routes;
  // Runs (see Pick): at most ``run_length`` requests and ``run_window_ns`` per run, or
  // ``run_idle_window_ns`` while each request finds none of the router's in flight.
  uint64_t run_length = 1;
  uint64_t run_window_ns = 0;
  uint64_t run_idle_window_ns = 0;
  std::atomic<uint64_t> in_flight{0};  // requests handed on and not yet answered, all instances
  bool decoupled = false;  // the targets (and so the router) answer with a stream
  // stateful targets: the target of each live sequence (see Choose)
  bool sequences = false;
  uint64_t sequence_idle_ns = 0;
  std::mutex sequence_mu;
  std::unordered_map<std::string, std::pair<std::string, uint64_t>> live;  // label, last seen
  uint64_t last_prune_ns = 0;
  std::mutex run_mu;
  std::shared_ptr<const Routes> run_routes;  // the routes the credits below belong to
  std::vector<double> credit;                // requests each target is owed
  size_t run_target = 0;
  uint64_t run_left = 0;
  uint64_t run_start_ns = 0;
};

// One request handed on to its target.
struct Call {
  struct InstanceState* instance = nullptr;
  TRITONBACKEND_Request* request = nullptr;
  TRITONSERVER_InferenceRequest* inner = nullptr;  // the request handed to the target
  const Target* target = nullptr;
  std::shared_ptr<const Routes> routes;  // keeps *target alive
  TRITONSERVER_InferenceResponse* response = nullptr;
  std::atomic<int> pending{2};  // the target's final response, and its request's release
  uint64_t start_ns = 0;
  bool cancel_sent = false;  // guarded by the instance's mu
  // decoupled: each response is passed on as it comes (see Stream)
  bool decoupled = false;
  std::mutex stream_mu;
  bool final_sent = false;  // guarded by stream_mu
  bool failed = false;      // guarded by stream_mu
  Call* prev = nullptr;      // the instance's calls in flight (guarded by its mu)
  Call* next = nullptr;
};

bool
CancellationSupported()
{
  return TRITONBACKEND_RequestIsCancelled != nullptr &&
         TRITONSERVER_InferenceRequestCancel != nullptr;
}

struct InstanceState {
  TRITONBACKEND_ModelInstance* instance = nullptr;
  ModelState* model = nullptr;
  std::mutex mu;
  std::condition_variable idle;
  uint64_t in_flight = 0;  // calls not yet finished, tracked or not
  Call* calls = nullptr;   // tracked calls: their request and inner request are alive

  // ``call`` is about to be handed on: count it and track it for cancellation.
  void Begin(Call* call)
  {
    std::lock_guard<std::mutex> lock(mu);
    ++in_flight;
    call->next = calls;
    if (calls != nullptr) {
      calls->prev = call;
    }
    calls = call;
  }
  // Before ``call``'s requests are released or deleted.
  void Untrack(Call* call)
  {
    std::lock_guard<std::mutex> lock(mu);
    if (call->prev != nullptr) {
      call->prev->next = call->next;
    } else if (calls == call) {
      calls = call->next;
    }
    if (call->next != nullptr) {
      call->next->prev = call->prev;
    }
    call->prev = call->next = nullptr;
    call->cancel_sent = false;  // a call handed on again is tracked anew
  }
  // After the caller of a begun call has been answered.
  void End()
  {
    std::lock_guard<std::mutex> lock(mu);
    if (--in_flight == 0) {
      idle.notify_all();
    }
  }
  // Passes each caller's cancellation on to the request handed to its target; returns
  // how many were passed on. Cancelling only marks a request, it calls nothing back.
  size_t PassOnCancellations()
  {
    size_t passed = 0;
    std::lock_guard<std::mutex> lock(mu);
    for (Call* call = calls; call != nullptr; call = call->next) {
      if (call->cancel_sent) {
        continue;
      }
      bool cancelled = false;
      TRITONSERVER_Error* err = TRITONBACKEND_RequestIsCancelled(call->request, &cancelled);
      if (err != nullptr) {
        TRITONSERVER_ErrorDelete(err);
        continue;
      }
      if (cancelled) {
        call->cancel_sent = true;
        err = TRITONSERVER_InferenceRequestCancel(call->inner);
        if (err != nullptr) {
          TRITONSERVER_ErrorDelete(err);
        } else {
          ++passed;
        }
      }
    }
    return passed;
  }
};

// The thread that passes cancellations on, for every router instance in the process.
struct Canceller {
  std::mutex mu;
  std::condition_variable wake;
  bool stop = false;
  std::vector<InstanceState*> instances;
  std::thread thread;

  void Run()
  {
    std::unique_lock<std::mutex> lock(mu);
    while (!stop) {
      wake.wait_for(lock, kCancelCheckInterval);
      for (InstanceState* instance : instances) {
        instance->PassOnCancellations();
      }
    }
  }
  void Add(InstanceState* instance)
  {
    std::lock_guard<std::mutex> lock(mu);
    instances.push_back(instance);
  }
  void Remove(InstanceState* instance)
  {
    std::lock_guard<std::mutex> lock(mu);
    instances.erase(std::remove(instances.begin(), instances.end(), instance), instances.end());
  }
};

Canceller* g_canceller = nullptr;

void
Report(Call* call, bool success)
{
  uint64_t end = NowNs();
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceReportStatistics(
      call->instance->instance, call->request, success, call->start_ns, call->start_ns, end,
      end);
  if (err != nullptr) {
    Log(TRITONSERVER_LOG_WARN, "cannot report statistics: " + Consume(err));
  }
}

// Sends the caller of ``request`` an error response (code and message given).
void
SendError(
    TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code, const std::string& message,
    uint32_t flags)
{
  TRITONBACKEND_Response* response = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseNew(&response, request);
  if (err != nullptr) {
    Log(TRITONSERVER_LOG_ERROR, "cannot create a response: " + Consume(err));
    return;
  }
  TRITONSERVER_Error* answer = TRITONSERVER_ErrorNew(code, message.c_str());
  err = TRITONBACKEND_ResponseSend(response, flags, answer);
  TRITONSERVER_ErrorDelete(answer);
  if (err != nullptr) {
    Log(TRITONSERVER_LOG_ERROR, "cannot send a response: " + Consume(err));
  }
}

// The caller has its answer: report the request's statistics and release it.
void
Conclude(Call* call, bool success)
{
  Report(call, success);
  TRITONSERVER_Error* err =
      TRITONBACKEND_RequestRelease(call->request, TRITONSERVER_REQUEST_RELEASE_ALL);
  if (err != nullptr) {
    Log(TRITONSERVER_LOG_ERROR, "cannot release a request: " + Consume(err));
  }
}

// Answers call->request with an error (code and message given), reports it and releases.
void
FailRequest(Call* call, TRITONSERVER_Error_Code code, const std::string& message)
{
  SendError(call->request, code, message, TRITONSERVER_RESPONSE_COMPLETE_FINAL);
  Conclude(call, false);
}

std::string
TargetPrefix(const Call* call)
{
  return "endpoint target " + call->target->label + ": ";
}

// Copies the outputs and parameters of ``answer`` (the target's response) into a response
// for the caller and sends it with ``flags``. Returns an error message (and sends nothing) if that is not
// possible.
std::string
Forward(Call* call, TRITONSERVER_InferenceResponse* answer, uint32_t flags)
{
  TRITONBACKEND_Response* response = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseNew(&response, call->request);
  if (err != nullptr) {
    return Consume(err);
  }
  uint32_t count = 0;
  err = TRITONSERVER_InferenceResponseOutputCount(answer, &count);
  for (uint32_t i = 0; err == nullptr && i < count; ++i) {
    const char* name;
    TRITONSERVER_DataType datatype;
    const int64_t* shape;
    uint64_t dims;
    const void* base;
    size_t byte_size;
    TRITONSERVER_MemoryType memory_type;
    int64_t memory_type_id;
    void* userp;
    err = TRITONSERVER_InferenceResponseOutput(
        answer, i, &name, &datatype, &shape, &dims, &base, &byte_size, &memory_type,
        &memory_type_id, &userp);
    if (err != nullptr) {
      break;
    }
    TRITONBACKEND_Output* output;
    err = TRITONBACKEND_ResponseOutput(
        response, &output, name, datatype, shape, static_cast<uint32_t>(dims));
    if (err != nullptr) {
      break;
    }
    void* buffer;
    TRITONSERVER_MemoryType out_type = TRITONSERVER_MEMORY_CPU;
    int64_t out_type_id = 0;
    err = TRITONBACKEND_OutputBuffer(output, &buffer, byte_size, &out_type, &out_type_id);
    if (err != nullptr) {
      break;
    }
    if (byte_size > 0) {
      if (out_type == TRITONSERVER_MEMORY_GPU) {
        err = Error(TRITONSERVER_ERROR_UNSUPPORTED, "an output buffer in GPU memory");
        break;
      }
      std::memcpy(buffer, base, byte_size);
    }
  }
  if (err == nullptr) {
    err = TRITONSERVER_InferenceResponseParameterCount(answer, &count);
  }
  for (uint32_t i = 0; err == nullptr && i < count; ++i) {  // the target's parameters
    const char* name;
    TRITONSERVER_ParameterType type;
    const void* value;
    err = TRITONSERVER_InferenceResponseParameter(answer, i, &name, &type, &value);
    if (err != nullptr) {
      break;
    }
    if (type == TRITONSERVER_PARAMETER_STRING) {
      err = TRITONBACKEND_ResponseSetStringParameter(
          response, name, static_cast<const char*>(value));
    } else if (type == TRITONSERVER_PARAMETER_INT) {
      err = TRITONBACKEND_ResponseSetIntParameter(
          response, name, *static_cast<const int64_t*>(value));
    } else if (type == TRITONSERVER_PARAMETER_BOOL) {
      err = TRITONBACKEND_ResponseSetBoolParameter(
          response, name, *static_cast<const bool*>(value));
    } else if (
        type == TRITONSERVER_PARAMETER_DOUBLE &&
        TRITONBACKEND_ResponseSetDoubleParameter != nullptr) {
      err = TRITONBACKEND_ResponseSetDoubleParameter(
          response, name, *static_cast<const double*>(value));
    }  // no backend API sets BYTES on a response (and the frontends refuse them)
  }
  if (err != nullptr) {
    TRITONBACKEND_ResponseDelete(response);
    return Consume(err);
  }
  err = TRITONBACKEND_ResponseSend(response, flags, nullptr);
  if (err != nullptr) {
    // the response belongs to Triton now, whatever happened
    Log(TRITONSERVER_LOG_ERROR, "cannot send a response: " + Consume(err));
  }
  return "";
}

// Sends the caller ``answer``, the target's response, with ``flags``: its outputs, or its
// error (or why its outputs could not be passed on) prefixed with the target. Returns
// whether the outputs went.
bool
PassOn(Call* call, TRITONSERVER_InferenceResponse* answer, uint32_t flags)
{
  TRITONSERVER_Error* target_error = TRITONSERVER_InferenceResponseError(answer);
  if (target_error != nullptr) {  // owned by the response
    SendError(
        call->request, TRITONSERVER_ErrorCode(target_error),
        TargetPrefix(call) + TRITONSERVER_ErrorMessage(target_error), flags);
    return false;
  }
  std::string problem = Forward(call, answer, flags);
  if (!problem.empty()) {
    SendError(call->request, TRITONSERVER_ERROR_INTERNAL, TargetPrefix(call) + problem, flags);
    return false;
  }
  return true;
}

// Both events of a call are in: answer the caller.
void
Finish(Call* call)
{
  InstanceState* instance = call->instance;
  instance->Untrack(call);
  // before the caller is answered: its next request must find this one done
  instance->model->in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (call->decoupled) {
    bool failed;
    {
      std::lock_guard<std::mutex> lock(call->stream_mu);
      if (!call->final_sent) {  // the stream ended without its final flag
        SendError(
            call->request, TRITONSERVER_ERROR_INTERNAL,
            TargetPrefix(call) + "the stream ended without a final response",
            TRITONSERVER_RESPONSE_COMPLETE_FINAL);
        call->final_sent = call->failed = true;
      }
      failed = call->failed;
    }
    Conclude(call, !failed);
  } else if (call->response == nullptr) {
    FailRequest(call, TRITONSERVER_ERROR_INTERNAL, TargetPrefix(call) + "no response");
  } else {
    Conclude(call, PassOn(call, call->response, TRITONSERVER_RESPONSE_COMPLETE_FINAL));
    TRITONSERVER_Error* err = TRITONSERVER_InferenceResponseDelete(call->response);
    if (err != nullptr) {
      TRITONSERVER_ErrorDelete(err);
    }
  }
  // released by Triton (OnRelease), deleted only now that no cancellation can reach it
  TRITONSERVER_Error* err = TRITONSERVER_InferenceRequestDelete(call->inner);
  if (err != nullptr) {
    TRITONSERVER_ErrorDelete(err);
  }
  delete call;
  instance->End();
}

void
Done(Call* call)
{
  if (call->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    Finish(call);
  }
}

// One response of a streaming target, passed on to the caller at once (the final flag
// with the last); nothing is passed on after the final flag.
void
Stream(Call* call, TRITONSERVER_InferenceResponse* response, uint32_t flags)
{
  const bool final = (flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) != 0;
  const uint32_t send_flags = final ? TRITONSERVER_RESPONSE_COMPLETE_FINAL : 0;
  std::lock_guard<std::mutex> lock(call->stream_mu);
  if (call->final_sent) {
    return;
  }
  if (response != nullptr) {
    if (!PassOn(call, response, send_flags)) {
      call->failed = true;
    }
  } else if (final) {
    TRITONBACKEND_ResponseFactory* factory = nullptr;
    TRITONSERVER_Error* err = TRITONBACKEND_ResponseFactoryNew(&factory, call->request);
    if (err == nullptr) {
      err = TRITONBACKEND_ResponseFactorySendFlags(factory, send_flags);
      TRITONSERVER_Error* del = TRITONBACKEND_ResponseFactoryDelete(factory);
      if (del != nullptr) {
        TRITONSERVER_ErrorDelete(del);
      }
    }
    if (err != nullptr) {
      Log(TRITONSERVER_LOG_ERROR, "cannot end a stream: " + Consume(err));
    }
  }
  if (final) {
    call->final_sent = true;
  }
}

void
OnResponse(TRITONSERVER_InferenceResponse* response, const uint32_t flags, void* userp)
{
  auto* call = static_cast<Call*>(userp);
  if (call->decoupled) {
    Stream(call, response, flags);
    if (response != nullptr) {
      TRITONSERVER_Error* err = TRITONSERVER_InferenceResponseDelete(response);
      if (err != nullptr) {
        TRITONSERVER_ErrorDelete(err);
      }
    }
  } else if (response != nullptr) {
    if (call->response == nullptr) {
      call->response = response;
    } else {  // a non-decoupled target answers once; keep the first answer
      TRITONSERVER_Error* err = TRITONSERVER_InferenceResponseDelete(response);
      if (err != nullptr) {
        TRITONSERVER_ErrorDelete(err);
      }
    }
  }
  if ((flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) != 0) {
    Done(call);
  }
}

void
OnRelease(TRITONSERVER_InferenceRequest*, const uint32_t flags, void* userp)
{
  if ((flags & TRITONSERVER_REQUEST_RELEASE_ALL) != 0) {
    Done(static_cast<Call*>(userp));  // Finish deletes the request
  }
}

// The request's correlation id (a number or a string) as text, or "" without one.
std::string
CorrelationId(TRITONBACKEND_Request* request)
{
  uint64_t id = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_RequestCorrelationId(request, &id);
  if (err == nullptr) {
    return id != 0 ? std::to_string(id) : "";
  }
  TRITONSERVER_ErrorDelete(err);
  const char* sid = nullptr;
  err = TRITONBACKEND_RequestCorrelationIdString(request, &sid);
  if (err != nullptr) {
    TRITONSERVER_ErrorDelete(err);
    return "";
  }
  return sid != nullptr ? sid : "";
}

// The text a double sticky key is hashed as, as the Python router's key_text: a whole
// number in the int64 range as that integer (3.0 as "3", the key of 3 and "3"), any other
// as the shortest of its %.15g, %.16g, %.17g texts that reads back as the same double
// (0.7 as "0.7"), NaN as "nan".
std::string
DoubleKeyText(double value)
{
  if (std::isnan(value)) {
    return "nan";
  }
  if (value == std::floor(value) && value >= -9223372036854775808.0 &&
      value < 9223372036854775808.0) {
    return std::to_string(static_cast<int64_t>(value));
  }
  char text[40];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) {
      break;
    }
  }
  return text;
}

// The request's sticky key, or "" to route at random.
std::string
StickyKey(const Routes& routes, TRITONBACKEND_Request* request)
{
  if (!routes.sticky_parameter.empty()) {
    uint32_t count = 0;
    TRITONSERVER_Error* err = TRITONBACKEND_RequestParameterCount(request, &count);
    if (err != nullptr) {
      TRITONSERVER_ErrorDelete(err);
      count = 0;
    }
    for (uint32_t i = 0; i < count; ++i) {
      const char* key;
      TRITONSERVER_ParameterType type;
      const void* value;
      err = TRITONBACKEND_RequestParameter(request, i, &key, &type, &value);
      if (err != nullptr) {
        TRITONSERVER_ErrorDelete(err);
        continue;
      }
      if (routes.sticky_parameter != key) {
        continue;
      }
      std::string text;
      if (type == TRITONSERVER_PARAMETER_STRING) {
        text = static_cast<const char*>(value);
      } else if (type == TRITONSERVER_PARAMETER_INT) {
        text = std::to_string(*static_cast<const int64_t*>(value));
      } else if (type == TRITONSERVER_PARAMETER_BOOL) {
        text = *static_cast<const bool*>(value) ? "true" : "false";
      } else if (type == TRITONSERVER_PARAMETER_DOUBLE) {
        text = DoubleKeyText(*static_cast<const double*>(value));
      }
      if (!text.empty()) {
        return text;
      }
    }
  }
  if (routes.use_correlation_id) {
    std::string id = CorrelationId(request);
    if (!id.empty()) {
      return "correlation:" + id;
    }
  }
  return "";
}

// The most requests one run of a target with ``weight`` may take: ``run_length`` for the
// targets of the largest weight, and in proportion for the others, rounded up: what a
// full run of the largest earns the target, so that a run of it is not followed by
// another one of it while the largest is owed requests (with two targets, never). A
// version given a small share (a canary at 5 %) then gets short runs: were it broken, the
// callers would see a few failures at a time spread over the stage, not one long run of
// failures (64 requests in a row at 5 %: every caller failing for as long as the run).
uint64_t
RunLength(uint64_t run_length, double weight, double largest)
{
  if (!(largest > 0.0) || weight >= largest) {
    return run_length;
  }
  double scaled = std::ceil(static_cast<double>(run_length) * weight / largest);
  return std::max<uint64_t>(1, static_cast<uint64_t>(scaled));
}

// The target of one request. With a sticky key the key's stable hash decides.
//
// Without one, and with ``run_length`` 1, each request gets its own weighted random draw.
// With longer runs, requests go to targets in runs of consecutive requests (at most
// ``run_length`` requests and ``run_window_ns``), so a target's instances stay busy and
// its dynamic batcher sees requests together instead of every target going idle between
// requests (bench/endpoint.py: at a 50/50 split over two Python-backend versions,
// alternating per request costs more server CPU than the routing itself). A request that
// finds nothing in flight (``idle``: one caller at a time) keeps the run going for up to
// ``run_idle_window_ns``: a lone caller's requests arrive further apart than the short
// window, and sending each to the other target than the last costs it the switch between
// the targets' processes on every call (about 1 ms a call for all-MiniLM-L6-v2 on CPU),
// while with callers in flight together the short window spreads them over the targets,
// which then work in parallel. A target's runs are scaled to its weight (RunLength), so a
// small share comes in short runs. Shares stay exact whatever the run lengths: every
// request credits each target with its share of the weights and debits the target it
// goes to by one, and each run goes to the target owed the most (a deficit round robin).
// Over any stretch of traffic each target gets its weight's share to within one run.
const Target&
Pick(
    ModelState* model, const std::shared_ptr<const Routes>& routes,
    TRITONBACKEND_Request* request, uint64_t now_ns, bool idle)
{
  const Routes& r = *routes;
  if (r.single >= 0) {
    return r.targets[r.single];
  }
  if (r.sticky()) {
    std::string key = StickyKey(r, request);
    if (!key.empty()) {
      return r.At(UnitFromBits(StableHash(key)) * r.total);
    }
  }
  if (model->run_length <= 1) {
    return r.At(RandomUnit() * r.total);
  }
  std::lock_guard<std::mutex> lock(model->run_mu);
  if (model->run_routes != routes) {  // new weights: start owing nothing
    model->run_routes = routes;
    model->credit.assign(r.targets.size(), 0.0);
    model->run_left = 0;
  }
  for (size_t i = 0; i < r.targets.size(); ++i) {
    model->credit[i] += r.targets[i].weight / r.total;
  }
  uint64_t window = idle ? std::max(model->run_window_ns, model->run_idle_window_ns)
                         : model->run_window_ns;
  if (model->run_left == 0 || now_ns > model->run_start_ns + window) {
    size_t best = 0;
    for (size_t i = 1; i < r.targets.size(); ++i) {
      if (model->credit[i] > model->credit[best]) {
        best = i;
      }
    }
    model->run_target = best;
    model->run_left = RunLength(model->run_length, r.targets[best].weight, r.largest);
    model->run_start_ns = now_ns;
  }
  model->credit[model->run_target] -= 1.0;
  --model->run_left;
  return r.targets[model->run_target];
}

// The target of one request: Pick's, except that a request of a live sequence goes where
// the sequence started (see "Sequences" at the top). For a request of a sequence this
// router has not seen start, ``*unseen`` is set to its correlation id (else left empty):
// the first target is a guess, to be corrected by Issue.
const Target&
Choose(
    ModelState* model, const std::shared_ptr<const Routes>& routes,
    TRITONBACKEND_Request* request, uint64_t now_ns, bool idle, std::string* unseen)
{
  if (!model->sequences) {
    return Pick(model, routes, request, now_ns, idle);
  }
  std::string key = CorrelationId(request);
  if (key.empty()) {
    return Pick(model, routes, request, now_ns, idle);
  }
  uint32_t flags = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_RequestFlags(request, &flags);
  if (err != nullptr) {
    TRITONSERVER_ErrorDelete(err);
    flags = 0;
  }
  std::lock_guard<std::mutex> lock(model->sequence_mu);
  const Target* target = nullptr;
  auto it = model->live.find(key);
  if ((flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START) == 0) {
    if (it == model->live.end()) {  // started before this router was in the path
      target = &routes->targets.front();
      *unseen = key;
    } else {
      for (const Target& t : routes->targets) {  // gone from the routes: placed anew
        if (t.label == it->second.first) {
          target = &t;
          break;
        }
      }
    }
  }
  if (target == nullptr) {
    target = &Pick(model, routes, request, now_ns, idle);
  }
  if ((flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END) != 0) {
    if (it != model->live.end()) {
      model->live.erase(it);
    }
  } else {
    model->live[key] = {target->label, now_ns};
  }
  // (no differences of unsigned times: another instance may have stamped a later time
  // than this request's ``now_ns``)
  if (now_ns > model->last_prune_ns + model->sequence_idle_ns) {
    for (auto entry = model->live.begin(); entry != model->live.end();) {
      if (now_ns > entry->second.second + model->sequence_idle_ns) {
        entry = model->live.erase(entry);
      } else {
        ++entry;
      }
    }
    model->last_prune_ns = now_ns;
  }
  return *target;
}

// Sequence ``key`` lives on the target labelled ``label`` (found by trying them in turn).
void
Remember(ModelState* model, const std::string& key, const std::string& label, uint64_t now_ns)
{
  std::lock_guard<std::mutex> lock(model->sequence_mu);
  auto it = model->live.find(key);
  if (it != model->live.end()) {  // not ended meanwhile (an END request forgets it)
    it->second = {label, now_ns};
  }
}

// Whether ``err`` is a sequence batcher's refusal of a request of a sequence it does not
// know: given at once, before anything ran, so the request may go to another target.
bool
UnknownSequence(TRITONSERVER_Error* err)
{
  return TRITONSERVER_ErrorCode(err) == TRITONSERVER_ERROR_INVALID_ARG &&
         std::strstr(TRITONSERVER_ErrorMessage(err), "must specify the START flag") != nullptr;
}

// Copies everything the target must see from the caller's request onto ``inner``.
TRITONSERVER_Error*
Prepare(TRITONBACKEND_Request* request, TRITONSERVER_InferenceRequest* inner)
{
  TRITONSERVER_Error* err = nullptr;
  uint64_t id = 0;
  err = TRITONBACKEND_RequestCorrelationId(request, &id);
  if (err == nullptr) {
    if (id != 0 && (err = TRITONSERVER_InferenceRequestSetCorrelationId(inner, id))) {
      return err;
    }
  } else {
    TRITONSERVER_ErrorDelete(err);
    const char* sid = nullptr;
    if ((err = TRITONBACKEND_RequestCorrelationIdString(request, &sid))) {
      return err;
    }
    if (sid != nullptr && sid[0] != '\0' &&
        (err = TRITONSERVER_InferenceRequestSetCorrelationIdString(inner, sid))) {
      return err;
    }
  }
  uint32_t flags = 0;
  if ((err = TRITONBACKEND_RequestFlags(request, &flags))) {
    return err;
  }
  if (flags != 0 && (err = TRITONSERVER_InferenceRequestSetFlags(inner, flags))) {
    return err;
  }
  uint32_t count = 0;
  if ((err = TRITONBACKEND_RequestParameterCount(request, &count))) {
    return err;
  }
  for (uint32_t i = 0; i < count; ++i) {
    const char* key;
    TRITONSERVER_ParameterType type;
    const void* value;
    if ((err = TRITONBACKEND_RequestParameter(request, i, &key, &type, &value))) {
      return err;
    }
    if (type == TRITONSERVER_PARAMETER_STRING) {
      err = TRITONSERVER_InferenceRequestSetStringParameter(
          inner, key, static_cast<const char*>(value));
    } else if (type == TRITONSERVER_PARAMETER_INT) {
      err = TRITONSERVER_InferenceRequestSetIntParameter(
          inner, key, *static_cast<const int64_t*>(value));
    } else if (type == TRITONSERVER_PARAMETER_BOOL) {
      err = TRITONSERVER_InferenceRequestSetBoolParameter(
          inner, key, *static_cast<const bool*>(value));
    } else if (type == TRITONSERVER_PARAMETER_DOUBLE) {
      err = TRITONSERVER_InferenceRequestSetDoubleParameter(
          inner, key, *static_cast<const double*>(value));
    }  // BYTES parameters come from backends only: no client protocol carries them
    if (err != nullptr) {
      return err;
    }
  }
  if ((err = TRITONBACKEND_RequestInputCount(request, &count))) {
    return err;
  }
  for (uint32_t i = 0; i < count; ++i) {
    TRITONBACKEND_Input* input;
    if ((err = TRITONBACKEND_RequestInputByIndex(request, i, &input))) {
      return err;
    }
    const char* name;
    TRITONSERVER_DataType datatype;
    const int64_t* shape;
    uint32_t dims;
    uint64_t byte_size;
    uint32_t buffers;
    if ((err = TRITONBACKEND_InputProperties(
             input, &name, &datatype, &shape, &dims, &byte_size, &buffers))) {
      return err;
    }
    if ((err = TRITONSERVER_InferenceRequestAddInput(inner, name, datatype, shape, dims))) {
      return err;
    }
    for (uint32_t b = 0; b < buffers; ++b) {
      const void* base;
      uint64_t size;
      TRITONSERVER_MemoryType memory_type;
      int64_t memory_type_id;
      if ((err = TRITONBACKEND_InputBuffer(
               input, b, &base, &size, &memory_type, &memory_type_id))) {
        return err;
      }
      if ((err = TRITONSERVER_InferenceRequestAppendInputData(
               inner, name, base, size, memory_type, memory_type_id))) {
        return err;
      }
    }
  }
  if ((err = TRITONBACKEND_RequestOutputCount(request, &count))) {
    return err;
  }
  for (uint32_t i = 0; i < count; ++i) {
    const char* name;
    if ((err = TRITONBACKEND_RequestOutputName(request, i, &name))) {
      return err;
    }
    if ((err = TRITONSERVER_InferenceRequestAddRequestedOutput(inner, name))) {
      return err;
    }
  }
  return nullptr;
}

// Hands one request on to its target; on failure answers it with the error at once.
void
Issue(InstanceState* instance, std::shared_ptr<const Routes> routes,
      TRITONBACKEND_Request* request, uint64_t start_ns)
{
  auto* call = new Call();
  call->instance = instance;
  call->request = request;
  call->start_ns = start_ns;
  ModelState* model = instance->model;
  call->decoupled = model->decoupled;
  if (g_canceller != nullptr) {
    bool cancelled = false;
    TRITONSERVER_Error* err = TRITONBACKEND_RequestIsCancelled(request, &cancelled);
    if (err != nullptr) {
      TRITONSERVER_ErrorDelete(err);
    } else if (cancelled) {
      FailRequest(call, TRITONSERVER_ERROR_CANCELLED, "request cancelled by the client");
      delete call;
      return;
    }
  }
  bool idle = model->in_flight.fetch_add(1, std::memory_order_relaxed) == 0;
  std::string unseen;  // the correlation id of a sequence whose target is a guess
  call->target = &Choose(model, routes, request, start_ns, idle, &unseen);
  call->routes = std::move(routes);
  size_t tried = 1;  // targets tried for an unseen sequence, in the order listed

  for (;;) {
    TRITONSERVER_InferenceRequest* inner = nullptr;
    TRITONSERVER_Error* err = TRITONSERVER_InferenceRequestNew(
        &inner, instance->model->server, call->target->model.c_str(), call->target->version);
    if (err == nullptr) {
      err = Prepare(request, inner);
    }
    if (err == nullptr) {
      err = TRITONSERVER_InferenceRequestSetReleaseCallback(inner, OnRelease, call);
    }
    if (err == nullptr) {
      err = TRITONSERVER_InferenceRequestSetResponseCallback(
          inner, g_allocator, nullptr, OnResponse, call);
    }
    bool begun = false;
    if (err == nullptr) {
      call->inner = inner;
      instance->Begin(call);
      begun = true;
      // (the call may be finished and deleted before ServerInferAsync returns)
      const std::string label = tried > 1 ? call->target->label : std::string();
      err = TRITONSERVER_ServerInferAsync(instance->model->server, inner, nullptr);
      if (err == nullptr) {
        if (!label.empty()) {
          Remember(model, unseen, label, start_ns);
        }
        return;  // OnResponse and OnRelease finish the call
      }
      instance->Untrack(call);
    }
    // not handed on: the inner request is still ours
    if (inner != nullptr) {
      TRITONSERVER_Error* del = TRITONSERVER_InferenceRequestDelete(inner);
      if (del != nullptr) {
        TRITONSERVER_ErrorDelete(del);
      }
    }
    if (!unseen.empty() && UnknownSequence(err) && tried < call->routes->targets.size()) {
      TRITONSERVER_ErrorDelete(err);
      if (begun) {
        instance->End();
      }
      call->target = &call->routes->targets[tried++];
      continue;
    }
    TRITONSERVER_Error_Code code = TRITONSERVER_ErrorCode(err);
    std::string message = TargetPrefix(call) + Consume(err);
    model->in_flight.fetch_sub(1, std::memory_order_relaxed);
    FailRequest(call, code, message);
    delete call;
    if (begun) {
      instance->End();
    }
    return;
  }
}

// The string value of config parameter ``key`` in the model config JSON, or "".
std::string
ConfigParameter(const std::string& json, const std::string& key)
{
  size_t at = json.find("\"" + key + "\"");
  if (at == std::string::npos) {
    return "";
  }
  at = json.find("\"string_value\"", at);
  if (at == std::string::npos) {
    return "";
  }
  at = json.find('"', at + std::strlen("\"string_value\""));
  if (at == std::string::npos) {
    return "";
  }
  std::string value;
  for (size_t i = at + 1; i < json.size(); ++i) {
    char c = json[i];
    if (c == '"') {
      return value;
    }
    if (c == '\\' && i + 1 < json.size()) {
      c = json[++i];
    }
    value.push_back(c);
  }
  return "";
}

// Whether the model config JSON makes the model decoupled (model_transaction_policy).
bool
IsDecoupled(const std::string& json)
{
  size_t at = json.find("\"model_transaction_policy\"");
  if (at == std::string::npos) {
    return false;
  }
  at = json.find("\"decoupled\"", at);
  if (at == std::string::npos) {
    return false;
  }
  at = json.find_first_not_of(" \t\r\n:", at + std::strlen("\"decoupled\""));
  return at != std::string::npos && json.compare(at, 4, "true") == 0;
}

// Config parameter ``key`` as a positive integer (``fallback`` if absent).
TRITONSERVER_Error*
PositiveParameter(const std::string& json, const char* key, uint64_t fallback, uint64_t* out)
{
  std::string text = ConfigParameter(json, key);
  if (text.empty()) {
    *out = fallback;
    return nullptr;
  }
  char* end = nullptr;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0' || value == 0) {
    return Error(
        TRITONSERVER_ERROR_INVALID_ARG,
        std::string(key) + " must be a positive integer, not '" + text + "'");
  }
  *out = value;
  return nullptr;
}

}  // namespace

// ----------------------------------------------------------------------------- backend API

ROUTER_EXPORT TRITONSERVER_Error*
TRITONBACKEND_Initialize(TRITONBACKEND_Backend*)
{
  uint32_t major = 0;
  uint32_t minor = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_ApiVersion(&major, &minor);
  if (err != nullptr) {
    return err;
  }
  if (major != TRITONCTL_TRITONBACKEND_API_VERSION_MAJOR ||
      minor < TRITONCTL_TRITONBACKEND_API_VERSION_MINOR) {
    return Error(
        TRITONSERVER_ERROR_UNSUPPORTED,
        "Triton's backend API " + std::to_string(major) + "." + std::to_string(minor) +
            " is too old (needs 1." +
            std::to_string(TRITONCTL_TRITONBACKEND_API_VERSION_MINOR) + " or newer 1.x)");
  }
  err = TRITONSERVER_ResponseAllocatorNew(&g_allocator, AllocCpu, ReleaseCpu, nullptr);
  if (err != nullptr) {
    return err;
  }
  if (CancellationSupported()) {
    g_canceller = new Canceller();
    g_canceller->thread = std::thread([] { g_canceller->Run(); });
  } else {
    Log(TRITONSERVER_LOG_WARN,
        "this Triton has no request cancellation API: cancelled requests still reach their "
        "targets");
  }
  return nullptr;
}

ROUTER_EXPORT TRITONSERVER_Error*
TRITONBACKEND_Finalize(TRITONBACKEND_Backend*)
{
  if (g_canceller != nullptr) {
    {
      std::lock_guard<std::mutex> lock(g_canceller->mu);
      g_canceller->stop = true;
    }
    g_canceller->wake.notify_all();
    g_canceller->thread.join();
    delete g_canceller;
    g_canceller = nullptr;
  }
  if (g_allocator != nullptr) {
    TRITONSERVER_Error* err = TRITONSERVER_ResponseAllocatorDelete(g_allocator);
    g_allocator = nullptr;
    return err;
  }
  return nullptr;
}

ROUTER_EXPORT TRITONSERVER_Error*
TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model)
{
  auto state = std::make_unique<ModelState>();
  const char* name;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelName(model, &name);
  if (err != nullptr) {
    return err;
  }
  state->name = name;
  if ((err = TRITONBACKEND_ModelServer(model, &state->server))) {
    return err;
  }
  TRITONBACKEND_ArtifactType artifact;
  const char* location;
  if ((err = TRITONBACKEND_ModelRepository(model, &artifact, &location))) {
    return err;
  }
  TRITONSERVER_Message* message;
  if ((err = TRITONBACKEND_ModelConfig(model, 1, &message))) {
    return err;
  }
  const char* base;
  size_t size;
  err = TRITONSERVER_MessageSerializeToJson(message, &base, &size);
  std::string json = err == nullptr ? std::string(base, size) : "";
  TRITONSERVER_Error* del = TRITONSERVER_MessageDelete(message);
  if (del != nullptr) {
    TRITONSERVER_ErrorDelete(del);
  }
  if (err != nullptr) {
    return err;
  }
  std::string relative = ConfigParameter(json, kRoutesParameter);
  if (relative.empty()) {
    return Error(
        TRITONSERVER_ERROR_INVALID_ARG,
        "the config of " + state->name + " has no '" + kRoutesParameter + "' parameter");
  }
  std::string path = relative[0] == '/' ? relative : std::string(location) + "/" + relative;
  if ((err = PositiveParameter(json, kRunLengthParameter, 1, &state->run_length))) {
    return err;
  }
  uint64_t window_us = 0;
  if ((err = PositiveParameter(json, kRunWindowParameter, 2000, &window_us))) {
    return err;
  }
  state->run_window_ns = window_us * 1000;
  uint64_t idle_window_us = 0;
  if ((err = PositiveParameter(json, kRunIdleWindowParameter, 100000, &idle_window_us))) {
    return err;
  }
  state->run_idle_window_ns = idle_window_us * 1000;
  state->decoupled = IsDecoupled(json);
  state->sequences = ConfigParameter(json, kSequencesParameter) == "true";
  uint64_t sequence_idle_us = 0;
  if ((err = PositiveParameter(json, kSequenceIdleParameter, 2000000, &sequence_idle_us))) {
    return err;
  }
  state->sequence_idle_ns = sequence_idle_us * 1000;
  state->routes = std::make_unique<RoutesFile>(path);
  if ((err = state->routes->Load())) {
    return err;
  }
  auto routes = state->routes->Get();
  Log(TRITONSERVER_LOG_INFO,
      "routes " + path + " generation " + std::to_string(routes->generation) + " loaded for " +
          state->name);
  return TRITONBACKEND_ModelSetState(model, state.release());
}

ROUTER_EXPORT TRITONSERVER_Error*
TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model)
{
  void* state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelState(model, &state);
  if (err != nullptr) {
    return err;
  }
  auto* model_state = static_cast<ModelState*>(state);
  if (model_state != nullptr) {
    Log(TRITONSERVER_LOG_INFO, "router " + model_state->name + " unloaded");
  }
  delete model_state;
  return nullptr;
}

ROUTER_EXPORT TRITONSERVER_Error*
TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance)
{
  TRITONBACKEND_Model* model;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceModel(instance, &model);
  if (err != nullptr) {
    return err;
  }
  void* model_state;
  if ((err = TRITONBACKEND_ModelState(model, &model_state))) {
    return err;
  }
  auto* state = new InstanceState();
  state->instance = instance;
  state->model = static_cast<ModelState*>(model_state);
  if ((err = TRITONBACKEND_ModelInstanceSetState(instance, state))) {
    delete state;
    return err;
  }
  if (g_canceller != nullptr) {
    g_canceller->Add(state);
  }
  return nullptr;
}

ROUTER_EXPORT TRITONSERVER_Error*
TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance)
{
  void* state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &state);
  if (err != nullptr) {
    return err;
  }
  auto* instance_state = static_cast<InstanceState*>(state);
  if (instance_state != nullptr) {
    // answers still on their way use this instance: wait for them
    {
      std::unique_lock<std::mutex> lock(instance_state->mu);
      instance_state->idle.wait(
          lock, [instance_state] { return instance_state->in_flight == 0; });
    }
    if (g_canceller != nullptr) {
      g_canceller->Remove(instance_state);
    }
  }
  delete instance_state;
  return nullptr;
}

ROUTER_EXPORT TRITONSERVER_Error*
TRITONBACKEND_ModelInstanceExecute(
    TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request** requests,
    const uint32_t request_count)
{
  uint64_t start = NowNs();
  void* state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &state);
  if (err != nullptr) {
    return err;  // the requests are still Triton's
  }
  auto* instance_state = static_cast<InstanceState*>(state);
  std::shared_ptr<const Routes> routes = instance_state->model->routes->Get();
  for (uint32_t i = 0; i < request_count; ++i) {
    Issue(instance_state, routes, requests[i], start);
  }
  uint64_t end = NowNs();
  err = TRITONBACKEND_ModelInstanceReportBatchStatistics(
      instance, request_count, start, start, end, end);
  if (err != nullptr) {
    Log(TRITONSERVER_LOG_WARN, "cannot report batch statistics: " + Consume(err));
  }
  return nullptr;
}
