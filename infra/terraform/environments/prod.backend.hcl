# terraform init -backend-config=environments/prod.backend.hcl
bucket = "mlops-terraform-state"   # created once, by hand or by an organisation-wide stack
key    = "mlops/prod/terraform.tfstate"
region = "eu-west-1"
