variable "PORT" {
  default = 3000
  validation {
    condition = PORT > 1024
    error_message = "The variable 'PORT' must be greater than 1024."
  }
}

variable "VERSION" {
  default = "v1.2.3"
  validation {
    condition = VERSION != ""
    error_message = "The variable 'VERSION' must not be empty."
  }
  validation {
    condition = regex_replace(VERSION, "^v[0-9]+\\.[0-9]+\\.[0-9]+$", "") == ""
    error_message = "The variable 'VERSION' must look like vX.Y.Z."
  }
}

target "default" {
  args = {
    PORT = PORT
    VERSION = VERSION
  }
}
