// Resident memory of the KV store follows use (issue 15): the pool's region is mapped lazily, freed blocks are
// reused most-recent-first, blocks free for longer than the release delay give their pages back, and idle
// cached prefixes keep at most their cap. Residency is read from the kernel (mincore), not from the pool's
// own bookkeeping.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class KVResidencyTests: XCTestCase {
    /// 8 pages a block (2 layers × K and V × 32 positions × 64 floats), so a block's pages are its own.
    private func makePool(mib: Int = 8) throws -> KVBlockPool {
        try KVBlockPool(layers: 2, rowWidth: 64, blockSize: 32, storage: .f32, bytes: mib << 20)
    }

    private func touch(_ pool: KVBlockPool, _ b: Int32) {
        for layer in 0..<pool.layerCount {
            memset(pool.keys(block: b, layer: layer), 1, pool.layerBytes)
            memset(pool.values(block: b, layer: layer), 1, pool.layerBytes)
        }
    }

    func testFreedBlocksGiveTheirPagesBackAfterTheDelay() throws {
        let pool = try makePool()
        XCTAssertEqual(pool.residentRegionBytes(), 0, "nothing written yet")
        var blocks: [Int32] = []
        for _ in 0..<100 {
            let b = try XCTUnwrap(pool.allocate())
            touch(pool, b)
            blocks.append(b)
        }
        XCTAssertEqual(pool.residentRegionBytes(), 100 * pool.blockBytes)
        XCTAssertEqual(pool.residentBlocks, 100)
        let before = DispatchTime.now().uptimeNanoseconds
        for b in blocks[..<60] { pool.release(b) }
        // Free but recent: kept (the next request would reuse them), until the cutoff passes their release.
        XCTAssertEqual(pool.releaseIdleMemory(freedBefore: before), 0)
        XCTAssertEqual(pool.residentRegionBytes(), 100 * pool.blockBytes)
        XCTAssertEqual(pool.releaseIdleMemory(freedBefore: DispatchTime.now().uptimeNanoseconds), 60)
        XCTAssertEqual(pool.residentRegionBytes(), 40 * pool.blockBytes)
        XCTAssertEqual(pool.residentBlocks, 40)
        // A given-back block is usable again: it reads as zeros until written.
        let again = try XCTUnwrap(pool.allocate())
        XCTAssertEqual(pool.keys(block: again, layer: 0).load(as: UInt8.self), 0)
        XCTAssertNil(pool.checkInvariants())
    }

    func testMostRecentlyFreedBlocksAreReusedFirst() throws {
        let pool = try makePool()
        let first = (0..<10).map { _ in pool.allocate()! }
        for b in first { touch(pool, b) }
        for b in first { pool.release(b) }
        // The next ten allocations take exactly the warm blocks, so no new page is touched.
        let second = (0..<10).map { _ in pool.allocate()! }
        XCTAssertEqual(Set(second), Set(first))
        for b in second { touch(pool, b) }
        XCTAssertEqual(pool.residentRegionBytes(), 10 * pool.blockBytes)
    }

    func testIdleCachedPrefixesStayWithinTheirCap() throws {
        let pool = try makePool()
        pool.maxIdleCachedBlocks = 3
        var cached: [Int32] = []
        for i in 0..<8 {
            let b = try XCTUnwrap(pool.allocate())
            touch(pool, b)
            pool.register(block: b, hash: UInt64(1000 + i))
            cached.append(b)
        }
        for b in cached { pool.release(b) }
        XCTAssertEqual(pool.idleCachedCount, 3)
        // The three most recently used stay findable; the older five left the cache and gave their pages back.
        XCTAssertEqual((0..<8).filter { pool.isCached(hash: UInt64(1000 + $0)) }, [5, 6, 7])
        XCTAssertEqual(pool.residentRegionBytes(), 3 * pool.blockBytes)
        XCTAssertEqual(pool.availableBlocks, pool.blockCount)
        XCTAssertNil(pool.checkInvariants())
    }

    /// Repeated waves of 32 concurrent requests (prefix caching off, nothing given back): the pool's resident
    /// memory stays at what one wave uses at its peak, wave after wave, far below the pool's size.
    func testRepeatedWavesStayNearThePeakInUse() throws {
        let m = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        var c = EngineConfiguration(threads: 2, contextLength: 128, kvCacheBytes: 64 << 20)
        c.blockSize = 32
        c.kvStorage = .f32
        c.prefixCaching = false
        c.kvReleaseDelay = nil
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        defer { e.stop() }
        let blockBytes = e.pool.blockBytes
        var resident: [Int] = []
        for wave in 0..<4 {
            let requests = EngineTests.prompts(count: 32, length: { 10 + ($0 + wave) % 20 }).map {
                EngineRequest(promptTokens: $0, maxTokens: 12, ignoreEOS: true)
            }
            for col in try run(e, requests) { XCTAssertNil(col.failure) }
            XCTAssertTrue(e.waitUntilIdle(timeout: 10))
            resident.append(e.pool.residentRegionBytes())
        }
        // A request holds at most 29 + 12 positions, 2 blocks: a wave has at most 64 blocks in use at once.
        for r in resident {
            XCTAssertGreaterThan(r, 0)
            XCTAssertLessThanOrEqual(r, 64 * blockBytes, "resident: \(r / blockBytes) blocks of \(e.pool.blockCount)")
        }
        XCTAssertLessThan(64, e.pool.blockCount / 8, "the pool is far larger than a wave's use")
    }

    /// After a burst, an idle engine gives the free blocks' pages back once they have been free for the delay.
    func testIdleEngineGivesMemoryBackAfterTheDelay() throws {
        let m = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let llama = try XCTUnwrap(m.llama)
        var c = EngineConfiguration(threads: 2, contextLength: 128, kvCacheBytes: 32 << 20)
        c.blockSize = 32
        c.kvStorage = .f32
        c.kvReleaseDelay = 0.3
        c.prefixCacheMaxBytes = 4 * llama.cacheLayout.layersPerBlock * 2 * 32 * KVStorage.f32.rowBytes(llama.kvDim)
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        defer { e.stop() }
        let requests = EngineTests.prompts(count: 16, length: { 40 + $0 }).map {
            EngineRequest(promptTokens: $0, maxTokens: 8, ignoreEOS: true)
        }
        for col in try run(e, requests) { XCTAssertNil(col.failure) }
        XCTAssertTrue(e.waitUntilIdle(timeout: 10))
        let deadline = Date().addingTimeInterval(10)
        while e.metrics().kvBlocksResident > 4 && Date() < deadline { usleep(50_000) }
        // What stays is the capped prefix cache: 4 blocks of the prompts' first 32 positions.
        XCTAssertEqual(e.pool.idleCachedCount, 4)
        XCTAssertEqual(e.metrics().kvBlocksResident, 4)
        XCTAssertEqual(e.pool.residentRegionBytes(), 4 * e.pool.blockBytes)
        assertAllBlocksFree(e)
    }
}
