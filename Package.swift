// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Tern",
    products: [
        .executable(name: "tern", targets: ["tern"]),
        .library(name: "TernCore", targets: ["TernCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Innermost SIMD loops, with runtime CPU dispatch (AVX-512 VNNI, AVX2, scalar). No unsafe flags anywhere:
        // a package that depends on TernCore by version must be able to build it; release builds optimise.
        .target(name: "CKernels"),
        // Formats, tokenizer, chat templates, kernels' Swift side, models, cache, engine.
        .target(
            name: "TernCore",
            dependencies: ["CKernels", .product(name: "DequeModule", package: "swift-collections")]
        ),
        // System libraries for the server: TLS and gzip.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // HTTP/1.1 on sockets and Dispatch, and the OpenAI-compatible API over the engine.
        .target(
            name: "TernServer",
            dependencies: ["TernCore", "COpenSSL", "CZlib", .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "tern",
            dependencies: ["TernCore", "TernServer", "CKernels",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // Fuzz targets for the parsers. A normal build replays corpus files (tern-fuzz TARGET FILE...); scripts/fuzz
        // builds it with -sanitize=fuzzer,address and -D TERN_LIBFUZZER on the command line, not here.
        .executableTarget(
            name: "tern-fuzz",
            dependencies: ["TernCore", "TernServer"]
        ),
        // Paths and helpers the test targets share.
        .target(
            name: "TernTestSupport",
            dependencies: ["TernCore"],
            path: "Tests/TernTestSupport"
        ),
        .testTarget(
            name: "TernCoreTests",
            dependencies: ["TernCore", "CKernels", "TernTestSupport"]
        ),
        .testTarget(
            name: "TernServerTests",
            dependencies: ["TernServer", "TernCore", "TernTestSupport"]
        ),
        // The `tern` command and the deploy/ files, checked from outside: the built binary runs as a subprocess.
        .testTarget(
            name: "TernCLITests",
            dependencies: ["TernTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
