// A probe of the native router's routing logic, without Triton: a shared library that
// includes the router's source (its internals live in an anonymous namespace) and exports
// a few plain C functions for tests/unit/test_native_router.py to call through ctypes.
// Triton's functions stay unresolved; loaded with lazy binding, the paths used here never
// call them.

#include "../../../triton_backends/router_native/router.cc"

#include <cstdio>

#define PROBE_EXPORT extern "C" __attribute__((visibility("default")))

PROBE_EXPORT uint64_t
probe_hash(const char* key)
{
  return StableHash(key);
}

PROBE_EXPORT double
probe_unit(uint64_t bits)
{
  return UnitFromBits(bits);
}

// The text a double sticky key is hashed as, into ``out``.
PROBE_EXPORT void
probe_double_key(double value, char* out, size_t out_len)
{
  std::snprintf(out, out_len, "%s", DoubleKeyText(value).c_str());
}

// Parses routes ``text``: 1 and "<targets> <total> <single>" in ``out``, or 0 and the error.
PROBE_EXPORT int
probe_parse(const char* text, char* out, size_t out_len)
{
  Routes routes;
  std::string error;
  if (!ParseRoutes(text, &routes, &error)) {
    std::snprintf(out, out_len, "%s", error.c_str());
    return 0;
  }
  std::snprintf(
      out, out_len, "%zu %g %d", routes.targets.size(), routes.total, routes.single);
  return 1;
}

// Routes ``n`` requests made ``step_ns`` apart by ``text`` with runs of at most ``run``
// requests within ``window_ns`` (``idle_window_ns`` for requests that find nothing in
// flight: all of them if ``idle``, none otherwise): requests per target in ``counts`` (in
// the order listed), the longest run of each target in ``longest`` (in the same order).
// Returns 0 if the routes do not parse.
PROBE_EXPORT int
probe_shares(
    const char* text, uint64_t run, uint64_t window_ns, uint64_t idle_window_ns, int idle,
    uint64_t n, uint64_t step_ns, uint64_t* counts, uint64_t* longest)
{
  auto routes = std::make_shared<Routes>();
  std::string error;
  if (!ParseRoutes(text, routes.get(), &error)) {
    return 0;
  }
  ModelState model;
  model.run_length = run;
  model.run_window_ns = window_ns;
  model.run_idle_window_ns = idle_window_ns;
  std::shared_ptr<const Routes> shared = routes;
  const Target* previous = nullptr;
  uint64_t streak = 0;
  uint64_t now = 1;
  for (uint64_t i = 0; i < n; ++i, now += step_ns) {
    const Target& target = Pick(&model, shared, nullptr, now, idle != 0);
    size_t index = static_cast<size_t>(&target - routes->targets.data());
    counts[index] += 1;
    streak = (&target == previous) ? streak + 1 : 1;
    longest[index] = std::max(longest[index], streak);
    previous = &target;
  }
  return 1;
}

// Tracks ``n`` calls on one instance, then untracks them in ``order`` (indexes); returns 1
// if after every step the instance's list, walked both ways, holds exactly the calls still
// tracked, else 0.
PROBE_EXPORT int
probe_track(const int* order, int n)
{
  InstanceState instance;
  std::vector<Call> calls(static_cast<size_t>(n));
  std::vector<bool> tracked(static_cast<size_t>(n), true);
  for (auto& call : calls) {
    instance.Begin(&call);
  }
  for (int step = 0; step <= n; ++step) {
    if (step > 0) {
      int i = order[step - 1];
      instance.Untrack(&calls[i]);
      tracked[i] = false;
    }
    std::vector<bool> seen(static_cast<size_t>(n), false);
    Call* last = nullptr;
    for (Call* c = instance.calls; c != nullptr; c = c->next) {
      size_t i = static_cast<size_t>(c - calls.data());
      if (i >= calls.size() || seen[i] || !tracked[i] || c->prev != last) {
        return 0;
      }
      seen[i] = true;
      last = c;
    }
    if (seen != tracked) {
      return 0;
    }
  }
  return instance.in_flight == static_cast<uint64_t>(n) ? 1 : 0;
}
