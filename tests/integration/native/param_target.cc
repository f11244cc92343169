// A tiny Triton backend for the endpoint tests: a target model whose responses carry
// parameters (the Python backend of Triton 2.51 cannot set response parameters). For each
// request it answers OUTPUT0 = INPUT0 + its version (FP32) and the response parameters
// target_version (int), note (string), checked (bool) and score (double).

#include <cstring>
#include <string>
#include <vector>

#include "../../../triton_backends/router_native/triton_api.h"

extern "C" {
TRITONSERVER_Error* TRITONBACKEND_ModelVersion(TRITONBACKEND_Model* model, uint64_t* version);
}

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

TRITONSERVER_Error*
Answer(TRITONBACKEND_Request* request, uint64_t version)
{
  TRITONBACKEND_Input* input;
  TRITONSERVER_Error* err = TRITONBACKEND_RequestInputByIndex(request, 0, &input);
  if (err != nullptr) {
    return err;
  }
  const char* name;
  TRITONSERVER_DataType datatype;
  const int64_t* shape;
  uint32_t dims;
  uint64_t byte_size;
  uint32_t buffers;
  err = TRITONBACKEND_InputProperties(
      input, &name, &datatype, &shape, &dims, &byte_size, &buffers);
  if (err != nullptr) {
    return err;
  }
  std::vector<float> values(byte_size / sizeof(float));
  char* to = reinterpret_cast<char*>(values.data());
  for (uint32_t b = 0; b < buffers; ++b) {
    const void* base;
    uint64_t size;
    TRITONSERVER_MemoryType memory_type = TRITONSERVER_MEMORY_CPU;
    int64_t memory_type_id = 0;
    err = TRITONBACKEND_InputBuffer(input, b, &base, &size, &memory_type, &memory_type_id);
    if (err != nullptr) {
      return err;
    }
    std::memcpy(to, base, size);
    to += size;
  }
  for (float& v : values) {
    v += static_cast<float>(version);
  }
  TRITONBACKEND_Response* response;
  if ((err = TRITONBACKEND_ResponseNew(&response, request)) != nullptr) {
    return err;
  }
  TRITONBACKEND_Output* output;
  void* buffer;
  TRITONSERVER_MemoryType out_type = TRITONSERVER_MEMORY_CPU;
  int64_t out_type_id = 0;
  err = TRITONBACKEND_ResponseOutput(response, &output, "OUTPUT0", datatype, shape, dims);
  if (err == nullptr) {
    err = TRITONBACKEND_OutputBuffer(output, &buffer, byte_size, &out_type, &out_type_id);
  }
  if (err == nullptr) {
    std::memcpy(buffer, values.data(), byte_size);
    err = TRITONBACKEND_ResponseSetIntParameter(
        response, "target_version", static_cast<int64_t>(version));
  }
  if (err == nullptr) {
    err = TRITONBACKEND_ResponseSetStringParameter(response, "note", "from the target");
  }
  if (err == nullptr) {
    err = TRITONBACKEND_ResponseSetBoolParameter(response, "checked", true);
  }
  if (err == nullptr) {
    err = TRITONBACKEND_ResponseSetDoubleParameter(response, "score", 0.25);
  }
  if (err != nullptr) {
    TRITONBACKEND_ResponseDelete(response);
    return err;
  }
  return TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, nullptr);
}

}  // namespace

EXPORT TRITONSERVER_Error*
TRITONBACKEND_ModelInstanceExecute(
    TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request** requests,
    const uint32_t request_count)
{
  TRITONBACKEND_Model* model;
  uint64_t version = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceModel(instance, &model);
  if (err == nullptr) {
    err = TRITONBACKEND_ModelVersion(model, &version);
  }
  if (err != nullptr) {
    return err;  // Triton answers every request with the error
  }
  for (uint32_t r = 0; r < request_count; ++r) {
    TRITONSERVER_Error* failed = Answer(requests[r], version);
    if (failed != nullptr) {
      TRITONBACKEND_Response* response;
      if (TRITONBACKEND_ResponseNew(&response, requests[r]) == nullptr) {
        TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, failed);
      }
      TRITONSERVER_ErrorDelete(failed);
    }
    TRITONBACKEND_RequestRelease(requests[r], TRITONSERVER_REQUEST_RELEASE_ALL);
  }
  return nullptr;
}
