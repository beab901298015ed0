//! How much of PID 1's own binary stays mapped once the app runs.
//!
//! Owns: dropping PID 1's mappings of its own read-only segments (code, constants) once, when the app runs.
//! Does not own: when that is (the event loop decides), anything writable.
//!
//! Why: PID 1 lives as long as the container, but most of its code (options, the runtime check, the ELF
//! reader, help) runs only before the app starts. The kernel maps a file's pages in aligned windows of 64 KiB
//! around every page a process touches (fault-around), so by the time the app runs nearly the whole binary is
//! mapped: counted in PID 1's RSS, and kept by reclaim as mapped executable pages. MADV_DONTNEED drops the
//! mappings, not the pages (they stay in the page cache, shared with every other process running the binary);
//! the steady-state loop then maps back only the windows it runs in. Only segments without write permission
//! qualify: their pages always equal the file, whereas dropping a written private page would lose it. (A
//! debugger's breakpoint is such a written page: one set before the app starts is lost; set it after.)

use std::ops::Range;

/// Drop the mappings of every read-only loadable segment of the running executable; returns the bytes
/// advised. A kernel that refuses (none does for these flags) leaves the pages mapped: harmless. Inlined
/// into the caller and allocation-free, so that what runs after the last madvise is the caller's own code
/// and no window of the binary is mapped back just to finish this function.
#[inline(always)]
pub fn release_read_only_segments() -> usize {
    let Some((headers, phdr_at, page)) = program_headers() else {
        return 0;
    };
    let bias = load_bias(headers, phdr_at);
    let mut released = 0;
    for range in headers
        .iter()
        .filter_map(|h| read_only_pages(h, bias, page))
    {
        // SAFETY: the range is whole pages inside a non-writable segment of our own executable: dropping
        // them only makes the next access re-read the same bytes from the file.
        if unsafe { libc::madvise(range.start as *mut _, range.len(), libc::MADV_DONTNEED) } == 0 {
            released += range.len();
        }
    }
    released
}

/// The running executable's program headers, where they are mapped, and the page size: from the auxiliary
/// vector the kernel passed (no syscall).
fn program_headers() -> Option<(&'static [libc::Elf64_Phdr], usize, usize)> {
    // SAFETY: getauxval only reads the auxiliary vector.
    let (phdr, phnum, page) = unsafe {
        (
            libc::getauxval(libc::AT_PHDR) as usize,
            libc::getauxval(libc::AT_PHNUM) as usize,
            libc::getauxval(libc::AT_PAGESZ) as usize,
        )
    };
    if phdr == 0 || !page.is_power_of_two() {
        return None;
    }
    // SAFETY: AT_PHDR points at AT_PHNUM program headers of the running executable, which the kernel mapped
    // with it and which stay mapped (read-only) for the life of the process.
    let headers = unsafe { std::slice::from_raw_parts(phdr as *const libc::Elf64_Phdr, phnum) };
    Some((headers, phdr, page))
}

/// A position-independent executable is loaded at a bias, which PT_PHDR (the headers' own address as
/// linked) gives; a static executable has none and no bias.
fn load_bias(headers: &[libc::Elf64_Phdr], phdr_at: usize) -> usize {
    headers
        .iter()
        .find(|h| h.p_type == libc::PT_PHDR)
        .map_or(0, |h| phdr_at.wrapping_sub(h.p_vaddr as usize))
}

/// The whole pages of a loadable segment without write permission, if any.
fn read_only_pages(h: &libc::Elf64_Phdr, bias: usize, page: usize) -> Option<Range<usize>> {
    if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
        return None;
    }
    let start = bias.wrapping_add(h.p_vaddr as usize);
    // Inward: a partial page at either end may also hold a neighbouring (writable) segment's bytes.
    let first = start.checked_add(page - 1)? & !(page - 1);
    let end = start.checked_add(h.p_memsz as usize)? & !(page - 1);
    (end > first).then_some(first..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_only_segments(
        headers: &[libc::Elf64_Phdr],
        phdr_at: usize,
        page: usize,
    ) -> Vec<Range<usize>> {
        let bias = load_bias(headers, phdr_at);
        headers
            .iter()
            .filter_map(|h| read_only_pages(h, bias, page))
            .collect()
    }

    fn header(p_type: u32, p_flags: u32, p_vaddr: u64, p_memsz: u64) -> libc::Elf64_Phdr {
        libc::Elf64_Phdr {
            p_type,
            p_flags,
            p_offset: 0,
            p_vaddr,
            p_paddr: p_vaddr,
            p_filesz: p_memsz,
            p_memsz,
            p_align: 0x1000,
        }
    }

    const R: u32 = libc::PF_R;
    const RX: u32 = libc::PF_R | libc::PF_X;
    const RW: u32 = libc::PF_R | libc::PF_W;

    #[test]
    fn only_whole_pages_of_segments_without_write_permission_are_released() {
        // The layout of a static musl build: header page, code, constants, then data sharing no page.
        let headers = [
            header(libc::PT_LOAD, R, 0x40_0000, 0x25c),
            header(libc::PT_LOAD, RX, 0x40_1000, 0x7_aa51),
            header(libc::PT_LOAD, R, 0x47_c000, 0x1_3e38),
            header(libc::PT_LOAD, RW, 0x49_0f38, 0x1248),
            header(libc::PT_GNU_STACK, RW, 0, 0),
        ];
        assert_eq!(
            read_only_segments(&headers, 0x40_0040, 0x1000),
            vec![0x40_1000..0x47_b000, 0x47_c000..0x48_f000]
        );
    }

    #[test]
    fn a_position_independent_executable_is_released_at_its_load_address() {
        let headers = [
            header(libc::PT_PHDR, R, 0x40, 0x230),
            header(libc::PT_LOAD, RX, 0x1000, 0x3000),
        ];
        let bias = 0x5555_0000_0000;
        assert_eq!(
            read_only_segments(&headers, bias + 0x40, 0x1000),
            vec![bias + 0x1000..bias + 0x4000]
        );
    }

    #[test]
    fn a_segment_that_shares_its_pages_with_writable_data_is_left_alone() {
        // Constants from 0x1800 to 0x2400: no page of them is whole.
        let headers = [header(libc::PT_LOAD, R, 0x1800, 0xc00)];
        assert_eq!(read_only_segments(&headers, 0, 0x1000), vec![]);
    }

    #[test]
    fn this_test_binary_has_read_only_pages_to_release() {
        // The headers the kernel gave this very process: its code is a read-only segment.
        let (headers, phdr_at, page) = program_headers().expect("the kernel passes AT_PHDR");
        let pages = read_only_segments(headers, phdr_at, page);
        let here = this_test_binary_has_read_only_pages_to_release as *const () as usize;
        assert!(
            pages.iter().any(|r| r.contains(&here)),
            "{here:#x} not in {pages:x?}"
        );
    }
}
