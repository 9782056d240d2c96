#include "model/nf4_holding_module.h"

namespace gemma {

namespace {

// The NF4 parts of a weight, as buffer-name suffixes and their fields, in one table.
const std::vector<std::pair<const char*, torch::Tensor Nf4Weight::*>>& nf4_parts() {
  static const std::vector<std::pair<const char*, torch::Tensor Nf4Weight::*>> parts = {
      {"_nf4_packed", &Nf4Weight::packed},
      {"_nf4_absmax_codes", &Nf4Weight::absmax_codes},
      {"_nf4_nested_absmax", &Nf4Weight::nested_absmax},
      {"_nf4_quant_map", &Nf4Weight::quant_map},
      {"_nf4_nested_quant_map", &Nf4Weight::nested_quant_map}};
  return parts;
}

}  // namespace

bool is_nf4_buffer_name(const std::string& name) {
  const size_t dot = name.rfind('.');
  const std::string last = dot == std::string::npos ? name : name.substr(dot + 1);
  for (const auto& [suffix, field] : nf4_parts()) {
    const std::string s(suffix);
    if (last.size() > s.size() && last.compare(last.size() - s.size(), s.size(), s) == 0)
      return true;
  }
  return false;
}

void Nf4HoldingModuleImpl::hold_as_nf4(const std::string& stem, Nf4Weight& w,
                                       torch::Tensor& dense) {
  register_nf4_buffers(stem, w);
  make_placeholder(stem, dense);
}

void Nf4HoldingModuleImpl::register_nf4_buffers(const std::string& stem, Nf4Weight& w) {
  for (const auto& [suffix, field] : nf4_parts()) {
    torch::Tensor& part = w.*field;
    if (part.defined()) part = register_buffer(stem + suffix, part);
  }
}

void Nf4HoldingModuleImpl::make_placeholder(const std::string& name, torch::Tensor& dense) {
  torch::NoGradGuard no_grad;
  dense.set_data(placeholder_of_shape(dense));
  dense.set_requires_grad(false);
  placeholders_.insert(name);
}

void Nf4HoldingModuleImpl::move(std::optional<torch::Device> device,
                                std::optional<torch::Dtype> dtype, bool non_blocking) {
  torch::NoGradGuard no_grad;
  for (auto& child : children()) {
    if (device && dtype) {
      child->to(*device, *dtype, non_blocking);
    } else if (dtype) {
      child->to(*dtype, non_blocking);
    } else {
      child->to(*device, non_blocking);
    }
  }
  const auto moved = [&](const torch::Tensor& t, bool keep_dtype) {
    const torch::Device d = device.value_or(t.device());
    const torch::Dtype s =
        keep_dtype || !t.is_floating_point() ? t.scalar_type() : dtype.value_or(t.scalar_type());
    return t.to(d, s, non_blocking);
  };
  for (auto& p : named_parameters(/*recurse=*/false)) {
    if (placeholders_.count(p.key())) {
      // An expanded single element: moving it must not materialise the full dense weight.
      const torch::Tensor one = moved(p.value().as_strided({1}, {1}), false);
      p.value().set_data(one.expand(p.value().sizes()));
    } else {
      p.value().set_data(moved(p.value(), false));
    }
  }
  for (auto& b : named_buffers(/*recurse=*/false))
    b.value().set_data(moved(b.value(), is_nf4_buffer_name(b.key())));
}

void Nf4HoldingModuleImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  move(device, dtype, non_blocking);
}

void Nf4HoldingModuleImpl::to(torch::Dtype dtype, bool non_blocking) {
  move(std::nullopt, dtype, non_blocking);
}

void Nf4HoldingModuleImpl::to(torch::Device device, bool non_blocking) {
  move(device, std::nullopt, non_blocking);
}

torch::Tensor placeholder_of_shape(const torch::Tensor& t) {
  return torch::zeros({1}, t.options()).expand(t.sizes());
}

}  // namespace gemma
