// An opt-in caching CPU allocator (featup_plugin.ops.enable_cpu_cache; docs/ops.md#the-caching-cpu-allocator).
//
// glibc maps every allocation above its mmap threshold (at most 32 MiB) fresh and unmaps it on free, so each
// large tensor of a training step (the stack's 77 MiB feature maps, their gradients) is first-touched page by page
// again: on a JBUStack(384) forward+backward that was a third of the time in the kernel's page-fault path. This
// allocator, installed as c10's CPU allocator, keeps freed blocks of at least `min_bytes` (size classes: 64 KiB
// steps below 32 MiB, 2 MiB above) and hands them out again (best fit, at most 1.25x the request's class), up to
// `max_cached` bytes of free blocks (beyond that the smallest cached blocks are unmapped). New blocks of 2 MiB or more
// are 2 MiB-aligned and, if asked, advised for transparent huge pages once. Smaller requests go to the allocator that
// was installed before.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "pytorch_cpp_helper.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#define FEATUP_HAVE_MMAP 1
#else
#define FEATUP_HAVE_MMAP 0
#endif

namespace featup {
namespace {

constexpr size_t kHuge = size_t(1) << 21;

size_t size_class(size_t n) {
  const size_t step = n >= (size_t(32) << 20) ? kHuge : (size_t(64) << 10);
  return (n + step - 1) / step * step;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (enabled_.load(std::memory_order_relaxed) && n >= min_bytes_.load(std::memory_order_relaxed)) {
      if (void* p = take(n)) return {p, p, &CachingCpuAllocator::deleter, c10::Device(c10::DeviceType::CPU)};
    }
    return prev_->allocate(n);
  }
  c10::DeleterFnPtr raw_deleter() const override { return &CachingCpuAllocator::deleter; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  static CachingCpuAllocator& get() {
    static CachingCpuAllocator* a = [] {
      auto* p = new CachingCpuAllocator();  // owned by c10 once installed; never freed
      pthread_atfork([] { get().mu_.lock(); }, [] { get().mu_.unlock(); }, [] { get().mu_.unlock(); });
      return p;
    }();
    return *a;
  }

  void enable(int64_t max_cached, int64_t min_bytes, bool huge_pages) {
    TORCH_CHECK(FEATUP_HAVE_MMAP, "the caching CPU allocator needs Linux (mmap)");
    TORCH_CHECK(max_cached >= 0, "max_cached must be >= 0, got ", max_cached);
    TORCH_CHECK(min_bytes >= 4096, "min_bytes must be >= 4096, got ", min_bytes);
    std::lock_guard<std::mutex> g(mu_);
    if (!enabled_) {
      c10::Allocator* cur = c10::GetCPUAllocator();
      if (cur != this) prev_ = cur;
    }
    max_cached_ = static_cast<size_t>(max_cached);
    min_bytes_ = static_cast<size_t>(min_bytes);
    huge_pages_ = huge_pages;
    enabled_ = true;
    trim_locked(max_cached_);
    c10::SetCPUAllocator(this, kPriority);
    TORCH_CHECK(c10::GetCPUAllocator() == this,
                "another CPU allocator of higher priority is installed; the caching allocator was not installed");
  }

  void disable() {
    std::lock_guard<std::mutex> g(mu_);
    if (!enabled_) return;
    enabled_ = false;
    trim_locked(0);
    if (c10::GetCPUAllocator() == this) c10::SetCPUAllocator(prev_, kPriority);
  }

  void empty() {
    std::lock_guard<std::mutex> g(mu_);
    trim_locked(0);
  }

  std::tuple<bool, int64_t, int64_t, int64_t, int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> g(mu_);
    return {enabled_.load(), static_cast<int64_t>(cached_), static_cast<int64_t>(live_bytes_), hits_, misses_,
            evictions_};
  }

 private:
  static constexpr uint8_t kPriority = 1;  // above c10's default CPU allocator (0)

  CachingCpuAllocator() : prev_(c10::GetCPUAllocator()) {}

  static void deleter(void* p) { get().release(p); }

  void* take(size_t n) {
    const size_t sz = size_class(n);
    {
      std::lock_guard<std::mutex> g(mu_);
      // Best fit among the free blocks of at most 1.25x the size class: one block then serves the neighbouring
      // sizes of a step (77 MiB and 81 MiB maps), so fewer blocks are kept than with exact classes.
      auto it = free_.lower_bound(sz);
      if (it != free_.end() && it->first <= sz + sz / 4) {
        void* p = it->second;
        const size_t got = it->first;
        free_.erase(it);
        cached_ -= got;
        live_.emplace(p, got);
        live_bytes_ += got;
        ++hits_;
        c10::profiledCPUMemoryReporter().New(p, n);
        return p;
      }
      ++misses_;
    }
    void* p = map_block(sz);
    if (p == nullptr) {
      empty();
      p = map_block(sz);
      if (p == nullptr) return nullptr;  // the previous allocator reports the out-of-memory error
    }
    std::lock_guard<std::mutex> g(mu_);
    live_.emplace(p, sz);
    live_bytes_ += sz;
    c10::profiledCPUMemoryReporter().New(p, n);
    return p;
  }

  void release(void* p) {
    if (p == nullptr) return;
    size_t sz = 0;
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        sz = it->second;
        live_.erase(it);
        live_bytes_ -= sz;
        c10::profiledCPUMemoryReporter().Delete(p);
        if (enabled_ && sz <= max_cached_) {
          trim_locked(max_cached_ - sz);
          free_.emplace(sz, p);
          cached_ += sz;
          return;
        }
      }
    }
    if (sz > 0) {
      unmap_block(p, sz);
      return;
    }
    // Not one of ours: a raw allocation of the previous allocator (raw_deleter() covers both).
    c10::DeleterFnPtr d = prev_->raw_deleter();
    TORCH_INTERNAL_ASSERT(d != nullptr, "featup cpu cache: cannot free a raw allocation of the previous allocator");
    d(p);
  }

  // Unmaps the smallest free blocks until at most `keep` bytes stay cached (lock held).
  void trim_locked(size_t keep) {
    while (cached_ > keep && !free_.empty()) {
      auto it = free_.begin();
      cached_ -= it->first;
      unmap_block(it->second, it->first);
      free_.erase(it);
      ++evictions_;
    }
  }

  void* map_block(size_t sz) const {
#if FEATUP_HAVE_MMAP
    const bool align = sz >= kHuge;
    const size_t len = sz + (align ? kHuge : 0);
    void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    auto base = reinterpret_cast<uintptr_t>(raw);
    uintptr_t p = base;
    if (align) {
      p = (base + kHuge - 1) & ~(kHuge - 1);
      if (p > base) munmap(raw, p - base);
      const uintptr_t end = base + len, used = p + sz;
      if (end > used) munmap(reinterpret_cast<void*>(used), end - used);
#if defined(MADV_HUGEPAGE)
      if (huge_pages_) madvise(reinterpret_cast<void*>(p), sz, MADV_HUGEPAGE);
#endif
    }
    return reinterpret_cast<void*>(p);
#else
    (void)sz;
    return nullptr;
#endif
  }

  static void unmap_block(void* p, size_t sz) {
#if FEATUP_HAVE_MMAP
    munmap(p, sz);
#else
    (void)p;
    (void)sz;
#endif
  }

  std::mutex mu_;
  c10::Allocator* prev_;
  std::atomic<bool> enabled_{false};
  bool huge_pages_ = true;
  size_t max_cached_ = 0;
  std::atomic<size_t> min_bytes_{size_t(1) << 20};
  std::unordered_map<void*, size_t> live_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0, live_bytes_ = 0;
  int64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace

void cpu_cache_enable(int64_t max_cached, int64_t min_bytes, bool huge_pages) {
  CachingCpuAllocator::get().enable(max_cached, min_bytes, huge_pages);
}
void cpu_cache_disable() { CachingCpuAllocator::get().disable(); }
void cpu_cache_empty() { CachingCpuAllocator::get().empty(); }
std::tuple<bool, int64_t, int64_t, int64_t, int64_t, int64_t> cpu_cache_stats() {
  return CachingCpuAllocator::get().stats();
}

}  // namespace featup
