# kmon_bpf_skeleton(NAME): compiles bpf/NAME.bpf.c to a CO-RE object with clang and
# generates NAME.skel.h with `bpftool gen skeleton`. The object is embedded in the
# skeleton header, so the exporter needs no compiler and no files at run time.
#
# vmlinux.h is generated once per build from the build host's BTF
# (KMON_VMLINUX_BTF, default /sys/kernel/btf/vmlinux); CO-RE relocations make the
# result run on other kernels.

find_program(KMON_CLANG NAMES clang REQUIRED)
find_program(KMON_BPFTOOL NAMES bpftool PATHS /usr/sbin /usr/local/sbin REQUIRED)
# Strips the DWARF of each object (~85% of its bytes) before it is embedded: libbpf needs
# only .BTF and .BTF.ext (CO-RE, line info), and every embedded byte is in the exporter's
# image (its pages touched at load count in its RSS).
find_program(KMON_LLVM_STRIP NAMES llvm-strip llvm-strip-14 REQUIRED)
set(KMON_VMLINUX_BTF "/sys/kernel/btf/vmlinux" CACHE FILEPATH "BTF used to generate vmlinux.h")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set(KMON_BPF_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
  set(KMON_BPF_ARCH arm64)
else()
  message(FATAL_ERROR "kmon: unsupported architecture ${CMAKE_SYSTEM_PROCESSOR}")
endif()

set(KMON_BPF_GEN_DIR "${CMAKE_BINARY_DIR}/bpf")
file(MAKE_DIRECTORY "${KMON_BPF_GEN_DIR}")
add_custom_command(
  OUTPUT "${KMON_BPF_GEN_DIR}/vmlinux.h"
  COMMAND ${KMON_BPFTOOL} btf dump file ${KMON_VMLINUX_BTF} format c > "${KMON_BPF_GEN_DIR}/vmlinux.h"
  COMMENT "Generating vmlinux.h from ${KMON_VMLINUX_BTF}"
  VERBATIM)
add_custom_target(kmon_vmlinux_h DEPENDS "${KMON_BPF_GEN_DIR}/vmlinux.h")

function(kmon_bpf_skeleton name)
  set(src "${PROJECT_SOURCE_DIR}/bpf/${name}.bpf.c")
  set(obj "${KMON_BPF_GEN_DIR}/${name}.bpf.o")
  set(skel "${KMON_BPF_GEN_DIR}/${name}.skel.h")
  file(GLOB bpf_headers CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/bpf/*.h")
  set(werror "")
  if(KMON_WERROR)
    set(werror "-Werror")
  endif()
  add_custom_command(
    OUTPUT "${obj}"
    COMMAND ${KMON_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_${KMON_BPF_ARCH}
            -Wall ${werror} -I "${KMON_BPF_GEN_DIR}" -I "${PROJECT_SOURCE_DIR}"
            -c "${src}" -o "${obj}"
    COMMAND ${KMON_LLVM_STRIP} -g "${obj}"
    DEPENDS "${src}" ${bpf_headers} "${KMON_BPF_GEN_DIR}/vmlinux.h"
    COMMENT "BPF ${name}.bpf.c"
    VERBATIM)
  add_custom_command(
    OUTPUT "${skel}"
    COMMAND ${KMON_BPFTOOL} gen skeleton "${obj}" name "${name}_bpf" > "${skel}"
    DEPENDS "${obj}"
    COMMENT "BPF skeleton ${name}.skel.h"
    VERBATIM)
  add_custom_target(${name}_skel DEPENDS "${skel}")
  # vmlinux.h is one file that every skeleton's compile depends on: made by one target
  # before any of them, or parallel builds generate it several times at once and a
  # compile reads a half-written one (seen: "source file is not valid UTF-8").
  add_dependencies(${name}_skel kmon_vmlinux_h)
endfunction()
