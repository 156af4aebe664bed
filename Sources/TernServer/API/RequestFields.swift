// Typed, validated access to the fields of a request body. Every wrong type or out-of-range value becomes an
// APIError naming the field; unknown fields are ignored.

import Foundation

struct RequestFields {
    let object: [(String, JSONValue)]

    init(body: Data) throws {
        guard !body.isEmpty else { throw APIError(400, "the request body is empty; expected a JSON object") }
        let value: JSONValue
        do {
            value = try JSONValue.parse(body)
        } catch {
            switch error.kind {
            case .tooDeep: throw APIError(400, "the request body is nested too deeply: \(error.description)")
            case .numberOutOfRange: throw APIError(400, "the request body holds a number that does not fit a double: \(error.description)")
            case .invalidUTF8: throw APIError(400, "the request body is not valid UTF-8: \(error.description)")
            case .syntax: throw APIError(400, "the request body is not valid JSON: \(error.description)")
            }
        }
        guard case .object(let o) = value else { throw APIError(400, "the request body must be a JSON object") }
        object = o
    }

    subscript(_ key: String) -> JSONValue? {
        guard let v = object.first(where: { $0.0 == key })?.1 else { return nil }
        if case .null = v { return nil }
        return v
    }

    func bool(_ key: String, default d: Bool) throws -> Bool {
        guard let v = self[key] else { return d }
        guard case .bool(let b) = v else { throw APIError.invalid(key, "'\(key)' must be a boolean") }
        return b
    }

    func int(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let v = self[key] else { return nil }
        let i: Int
        switch v {
        case .int(let x) where x >= Int64(Int.min) && x <= Int64(Int.max): i = Int(x)
        case .double(let d) where d == d.rounded() && abs(d) < 1e15: i = Int(d)
        default: throw APIError.invalid(key, "'\(key)' must be an integer")
        }
        if let range, !range.contains(i) {
            throw APIError.invalid(key, "'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(i)")
        }
        return i
    }

    func number(_ key: String, _ check: (Double) -> Bool = { _ in true }, _ rule: String = "") throws -> Double? {
        guard let v = self[key] else { return nil }
        let d: Double
        switch v {
        case .int(let x): d = Double(x)
        case .double(let x): d = x
        default: throw APIError.invalid(key, "'\(key)' must be a number")
        }
        guard d.isFinite, check(d) else { throw APIError.invalid(key, "'\(key)' must be \(rule), got \(d)") }
        return d
    }

    func string(_ key: String) throws -> String? {
        guard let v = self[key] else { return nil }
        guard case .string(let s) = v else { throw APIError.invalid(key, "'\(key)' must be a string") }
        return s
    }

    /// A string or an array of strings (`stop`).
    func strings(_ key: String, max: Int) throws -> [String] {
        guard let v = self[key] else { return [] }
        switch v {
        case .string(let s): return [s]
        case .array(let items):
            guard items.count <= max else { throw APIError.invalid(key, "'\(key)' may hold at most \(max) entries") }
            return try items.map {
                guard case .string(let s) = $0 else { throw APIError.invalid(key, "'\(key)' must be a string or an array of strings") }
                return s
            }
        default: throw APIError.invalid(key, "'\(key)' must be a string or an array of strings")
        }
    }
}
